"""Work pools: many items of one kind of work at once, claimed only when they can start.

A pool serves one due queue (services/common/due_queue.py) with a bounded number of
slots. Its claimer claims at most as many due items as it has free slots, runs each in a
task of its own, renews the item's lease while it runs (a heartbeat that re-scores the
item only while this replica still holds it) and releases it when its work is done:

    claim (free slots only) → work (heartbeat every lease/3) → release

Nothing waits in a local queue holding a lease, so a lease never runs out while its item
waits for a slot, and a replica whose slots are full claims nothing: other replicas take
the work. The lease can be short (WORK_LEASE_SECONDS): work of a replica that died is due
again one lease after its last heartbeat, and a live replica claims it.

Each kind of work has its own pool, so a slow kind (n8n answering in seconds) never
holds up another (a reply waiting for Kommo), and a flood of one never starves another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from services.common.due_queue import Claim, DueQueue
from services.common.grpc_server import BackgroundTask

log = logging.getLogger(__name__)

# After a Redis error the claimer waits this long before claiming again.
_REDIS_PAUSE_SECONDS = 1.0

Work = Callable[[Claim], Awaitable[None]]


async def _heartbeat(queue: DueQueue, claim: Claim, lease_ms: int, done: asyncio.Event) -> None:
    interval = max(lease_ms / 3, 1) / 1000
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=interval)
            return
        try:
            if not await queue.renew(claim, lease_ms):
                # New work re-scored it (that schedule stands), or the lease ran out
                # while Redis was unreachable and another replica took it.
                log.info("lease of %s no longer held", queue.key, extra={"item": claim.member})
                return
        except RedisError as exc:
            log.warning("lease of %s not renewed: %s", queue.key, exc)


@contextlib.asynccontextmanager
async def leased(queue: DueQueue, claim: Claim, lease_ms: int) -> AsyncIterator[Claim]:
    """Keep `claim` leased while the block runs (for work claimed outside a pool too,
    e.g. a reply delivered inside the request that brought it)."""
    done = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(queue, claim, lease_ms, done))
    try:
        yield claim
    finally:
        done.set()
        # Waited for, never cancelled: a renewal in flight finishes and `claim.lease`
        # stays the item's score.
        await asyncio.shield(beat)


class WorkPool(BackgroundTask):
    """Claims due items of one queue into at most `slots` concurrent tasks."""

    def __init__(
        self,
        kind: str,
        queue: DueQueue,
        work: Work,
        *,
        slots: int,
        lease_ms: int,
        poll_seconds: float,
    ) -> None:
        if slots < 1:
            raise ValueError("a work pool needs at least one slot")
        self.kind = kind
        self.name = f"{kind}-pool"
        self.queue = queue
        self.slots = slots
        self._work = work
        self._lease_ms = lease_ms
        self._poll_seconds = poll_seconds
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def busy(self) -> int:
        """Items being worked on now."""
        return len(self._running)

    def kick(self) -> None:
        """New work is due now: claim without waiting for the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                self._wake.clear()
                free = self.slots - len(self._running)
                claimed: list[Claim] = []
                if free > 0:
                    try:
                        claimed = await self.queue.claim(free, self._lease_ms)
                    except RedisError as exc:
                        log.warning("%s: redis error, claiming again soon: %s", self.name, exc)
                        await self._pause(stopping, _REDIS_PAUSE_SECONDS)
                        continue
                    for claim in claimed:
                        self._start(claim)
                # Full: a finishing task wakes the claimer. Drained: a kick or the poll.
                await self._pause(stopping, self._poll_seconds)
            # Stopping: take nothing more, finish what is held (the server cancels what
            # is left after its grace period; the leases then run out).
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
        finally:
            for task in self._running:
                task.cancel()

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._run_one(claim), name=f"{self.kind}:{claim.member}")
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a slot is free

    async def _pause(self, stopping: asyncio.Event, seconds: float) -> None:
        await wait_any(self._wake, stopping, seconds)

    async def _run_one(self, claim: Claim) -> None:
        async with leased(self.queue, claim, self._lease_ms):
            try:
                await self._work(claim)
            except RedisError as exc:
                # Left leased: due again when the lease runs out.
                log.warning("%s %s: redis error: %s", self.kind, claim.member, exc)
                return
            except Exception:
                # Work reports its own failures (due_queue.WorkFailures); this is a bug.
                log.exception("%s %s failed unexpectedly", self.kind, claim.member)
                return
        # Done. Work that rescheduled or settled its item re-scored it already, so this
        # removes only an item still held at our lease.
        try:
            await self.queue.release(claim)
        except RedisError as exc:
            log.warning("%s %s: not released (redis error): %s", self.kind, claim.member, exc)


async def wait_any(event: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
    """Until `event` or `stopping` is set, or `seconds` have passed."""
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
