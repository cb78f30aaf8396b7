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

When to claim (issue 22: event-driven, not polled). A claimer does not poll its queue:

- the claim returns, with the items, the queue's lowest score after it: when its next
  item is due or a lease (of any replica) runs out. The claimer sleeps until then, so a
  turn due after the debounce starts on time, and the work of a replica that died is
  claimed when its lease ends;
- a kick (`WorkPool.kick`, this process) or a change of the queue's key in Redis (any
  replica, any script: keyspace notifications, `queue_watch.QueueWatch`) wakes it at once;
- a finishing task wakes it (a slot is free) when its last claim took as many items as
  it had slots for, so more may be due;
- work this process claims in passing (a script that queues an item and leases it to
  the caller in the same call) runs in a slot kept for it (`reserve`, `adopt`): no
  claim at all;
- only a slow poll is left (POLL_INTERVAL_SECONDS, ±20 % jitter so replicas spread out),
  for what none of these told it: a notification lost while Redis was unreachable, or
  a Redis where keyspace notifications cannot be enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from services.common.due_queue import Claim, DueQueue, FailureKeys, now_ms
from services.common.grpc_server import BackgroundTask
from services.common.queue_watch import QueueWatch

log = logging.getLogger(__name__)

# After a Redis error the claimer waits this long before claiming again.
_REDIS_PAUSE_SECONDS = 1.0
# The slow poll is spread this much either way, so replicas do not poll together.
_POLL_JITTER = 0.2
# A change seen in Redis (notifications) makes a claim at most this often per pool: a
# busy queue changes at every claim, renewal and release of every replica, and work this
# replica queues itself is claimed at once by a kick. Under load this costs at most what
# the old 0.1 s poll did; idle, nothing.
_NOTICE_SPACING_SECONDS = 0.1

Work = Callable[[Claim], Awaitable[None]]


class _Heartbeat:
    """Renews `claim`'s lease every third of it while its work runs. A timer, not a task:
    most work ends long before the first renewal, and then costs only the timer (issue
    22: a task and an Event waiter per item were a measurable share of a message's CPU).
    Renewal stops when the lease is no longer held."""

    def __init__(self, queue: DueQueue, claim: Claim, lease_ms: int) -> None:
        self._queue = queue
        self._claim = claim
        self._lease_ms = lease_ms
        self._interval = max(lease_ms / 3, 1) / 1000
        self._loop = asyncio.get_running_loop()
        self._done = False
        self._renewal: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self._interval, self._beat)

    def _beat(self) -> None:
        self._timer = None
        if not self._done:
            self._renewal = self._loop.create_task(self._renew())

    async def _renew(self) -> None:
        queue, claim = self._queue, self._claim
        try:
            if not await queue.renew(claim, self._lease_ms):
                # New work re-scored it (that schedule stands), or the lease ran out
                # while Redis was unreachable and another replica took it.
                log.info("lease of %s no longer held", queue.key, extra={"item": claim.member})
                return
        except RedisError as exc:
            log.warning("lease of %s not renewed: %s", queue.key, exc)
        if not self._done:
            self._timer = self._loop.call_later(self._interval, self._beat)

    async def stop(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        renewal = self._renewal
        if renewal is not None and not renewal.done():
            # Waited for, never cancelled: a renewal in flight finishes and `claim.lease`
            # stays the item's score.
            await asyncio.shield(renewal)


@contextlib.asynccontextmanager
async def leased(queue: DueQueue, claim: Claim, lease_ms: int) -> AsyncIterator[Claim]:
    """Keep `claim` leased while the block runs (for work claimed outside a pool too,
    e.g. a reply delivered inside the request that brought it)."""
    beat = _Heartbeat(queue, claim, lease_ms)
    try:
        yield claim
    finally:
        await beat.stop()


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
        watch: bool = True,
        failures: FailureKeys | None = None,
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
        self._watch = watch
        self._failures = failures
        self._running: set[asyncio.Task[None]] = set()
        # Slots kept for work this process claims outside the pool (`reserve`, `adopt`).
        self._reserved = 0
        # The last claim took as many items as it had slots for (more may be due), or a
        # wake-up came while every slot was taken: a slot freed claims again. Otherwise
        # a finishing task costs no claim (issue 22: was one empty claim after each item).
        self._more = True
        # Items this process queued for later without waking anyone (`expect`): member →
        # due (ms). The claimer wakes at the earliest; `forget` drops one settled meanwhile.
        self._expected: dict[str, int] = {}
        self._expect_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._last_claim = 0.0
        self._notice_timer: asyncio.TimerHandle | None = None
        self.claims = 0  # claims made (for tests and the curious)

    @property
    def busy(self) -> int:
        """Items being worked on now."""
        return len(self._running)

    @property
    def free(self) -> int:
        """Slots neither working nor kept."""
        return self.slots - len(self._running) - self._reserved

    def reserve(self) -> bool:
        """Keep a slot for an item this process is about to claim itself (a script that
        claims it in passing, e.g. the commit that queues an envelope); False when none
        is free. Then `adopt` the claim, or `unreserve` when the script did not claim."""
        if self.free <= 0:
            return False
        self._reserved += 1
        return True

    def unreserve(self) -> None:
        self._reserved -= 1
        if self._more:
            self._wake.set()

    def take(self, claim: Claim | None, work: Work) -> None:
        """End a reservation: run `claim` in the slot it kept (`adopt`), or free the slot
        when the script did not claim (None)."""
        if claim is None:
            self.unreserve()
        else:
            self.adopt(claim, work)

    def adopt(self, claim: Claim, work: Work | None = None) -> None:
        """Run an item claimed outside the pool in the slot `reserve` kept, leased and
        released as the pool's own; `work` instead of the pool's (it holds what the
        claim returned)."""
        self._reserved -= 1
        self._start(claim, work)

    def kick(self) -> None:
        """New work is due now: claim without waiting for the next poll."""
        self._wake.set()

    def expect(self, member: str, due_ms: int) -> None:
        """This process queued `member` due at `due_ms` without a notification (a timer
        only this replica needs to hear of: if it dies, another finds the item at its
        slow poll): wake then."""
        self._expected[member] = due_ms
        self._arm()

    def forget(self, member: str) -> None:
        """An expected item was settled before it was due: no wake-up for it."""
        if self._expected.pop(member, None) is not None:
            self._arm()

    def _arm(self) -> None:
        if self._expect_timer is not None:
            self._expect_timer.cancel()
            self._expect_timer = None
        if self._expected:
            wait = max(min(self._expected.values()) - now_ms() + 1, 0) / 1000
            self._expect_timer = asyncio.get_running_loop().call_later(wait, self._due)

    def _due(self) -> None:
        self._expect_timer = None
        now = now_ms()
        for member, due in list(self._expected.items()):
            if due <= now:
                del self._expected[member]
        self._wake.set()
        self._arm()

    def notice(self) -> None:
        """The queue changed in Redis (any replica): claim again soon."""
        if self._wake.is_set() or self._notice_timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_claim + _NOTICE_SPACING_SECONDS - loop.time()
        if wait <= 0:
            self._wake.set()
        else:
            self._notice_timer = loop.call_later(wait, self._noticed)

    def _noticed(self) -> None:
        self._notice_timer = None
        self._wake.set()

    def _slow_poll(self) -> float:
        return self._poll_seconds * random.uniform(1 - _POLL_JITTER, 1 + _POLL_JITTER)  # noqa: S311

    async def run(self, stopping: asyncio.Event) -> None:
        watch = QueueWatch.of(self.queue.redis) if self._watch else None
        if watch is not None:
            watch.add(self)
        stop_wakes = asyncio.create_task(_set_when(stopping, self._wake))
        try:
            while not stopping.is_set():
                self._wake.clear()
                free = self.free
                wait = self._slow_poll()
                if free <= 0:
                    self._more = True  # whatever woke it is looked at when a slot frees
                else:
                    try:
                        claimed, next_ms = await self.queue.claim_next(
                            free, self._lease_ms, self._failures
                        )
                    except RedisError as exc:
                        log.warning("%s: redis error, claiming again soon: %s", self.name, exc)
                        await self._pause(stopping, _REDIS_PAUSE_SECONDS)
                        continue
                    finally:
                        self._last_claim = asyncio.get_running_loop().time()
                        self.claims += 1
                    self._more = len(claimed) >= free
                    for claim in claimed:
                        self._start(claim)
                    if next_ms is not None and len(claimed) < free:
                        # Asleep until the next item is due or a lease runs out (a
                        # millisecond late rather than early: scores are whole ms).
                        wait = min(wait, max(next_ms - now_ms() + 1, 0) / 1000)
                # Full: a finishing task wakes the claimer. Drained: the next due score,
                # a kick, a change in Redis, or the slow poll.
                await self._pause(stopping, wait)
            # Stopping: take nothing more, finish what is held (the server cancels what
            # is left after its grace period; the leases then run out).
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
        finally:
            stop_wakes.cancel()
            if watch is not None:
                watch.remove(self)
            if self._notice_timer is not None:
                self._notice_timer.cancel()
                self._notice_timer = None
            if self._expect_timer is not None:
                self._expect_timer.cancel()
                self._expect_timer = None
            for task in self._running:
                task.cancel()

    def _start(self, claim: Claim, work: Work | None = None) -> None:
        task = asyncio.create_task(
            self._run_one(claim, work or self._work), name=f"{self.kind}:{claim.member}"
        )
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._more:
            self._wake.set()  # a slot is free, and more may be due

    async def _pause(self, stopping: asyncio.Event, seconds: float) -> None:
        """Until a wake-up (stopping sets one too, see `run`) or `seconds` have passed;
        no task of its own."""
        if stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _run_one(self, claim: Claim, work: Work) -> None:
        async with leased(self.queue, claim, self._lease_ms):
            try:
                await work(claim)
            except RedisError as exc:
                # Left leased: due again when the lease runs out.
                log.warning("%s %s: redis error: %s", self.kind, claim.member, exc)
                return
            except Exception:
                # Work reports its own failures (due_queue.WorkFailures); this is a bug.
                log.exception("%s %s failed unexpectedly", self.kind, claim.member)
                return
        # Done. Work that rescheduled or settled its item re-scored it already (and says
        # so: nothing to do); otherwise this removes the item if still held at our lease.
        if claim.settled:
            return
        try:
            await self.queue.release(claim)
        except RedisError as exc:
            log.warning("%s %s: not released (redis error): %s", self.kind, claim.member, exc)


async def _set_when(stopping: asyncio.Event, wake: asyncio.Event) -> None:
    await stopping.wait()
    wake.set()


async def wait_any(event: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
    """Until `event` or `stopping` is set, or `seconds` have passed."""
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
