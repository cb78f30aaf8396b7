"""Stage 1, webhook events, read: partitioned streams, each read by one replica at a time,
each entry applied to its conversation (stages/events.py), then acknowledged.

claim: webhook events are spread over EVENT_PARTITIONS streams by their conversation
(store.routing_key: its lead, or its chat before a lead exists). A replica reads only the
partitions whose lease it holds (stages/event_partitions.py): it takes free ones up to its
fair share — ceil(partitions / live replicas) — and gives back what exceeds it once more
replicas are alive, so two replicas never read one conversation's events side by side. A
partition taken over (its owner died: its lease ran out after WORK_LEASE_SECONDS) is
read only after the entries its last owner left pending are claimed (XAUTOCLAIM from
idle 0: the lease proves the old owner no longer reads them), so they keep their order.
XREADGROUP reads only as many entries as this replica has room for (WORKER_BATCH held at
once), blocking until entries come; when the partitions it reads change (or it stops)
the read is cancelled, and what Redis may have delivered to it is read again from this
consumer's pending entries before anything newer. work: each entry goes to a lane by the
hash of the same key modulo EVENT_LANES; a
lane is one task, so one conversation's events are applied in stream order while other
conversations' events are applied side by side. Before an entry is applied its lane checks
that the lease is still held, and the apply script checks it again atomically (fencing: a
replica frozen past its lease applies nothing; one caught mid-apply may apply an entry its
successor applies too, which records the message once). release: an entry is
acknowledged (and deleted) only after its lane applied it; one that fails stays pending
and is tried again after VISIBILITY_TIMEOUT_SECONDS, then parked after
MAX_EVENT_ATTEMPTS. On shutdown the leases are released once the lanes are empty.

The stream of earlier versions (store.EVENTS_STREAM) is drained the same way, under a
lease of its own, while it holds entries.

Applying a message is quick (Redis, no n8n): a customer's message makes its turn due and
wakes the turn pool (stages/turns.py); the lane goes on with the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.common.due_queue import WorkFailures, describe
from services.common.grpc_server import BackgroundTask
from services.common.logs import flow
from services.common.workpool import wait_any
from services.conversation.stages.event_partitions import PartitionOwnership
from services.conversation.stages.events import Ack, EventStage, PartitionLost
from services.conversation.store.keys import (
    EVENTS_STREAM,
    WORKERS_GROUP,
    event_stream,
    routing_key,
)
from services.conversation.store.leases import EventLeases
from services.conversation.webhook_events import LeadEvent, MessageEvent

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# How often ownership is looked at while partitions change hands (a replica joined or
# left): a partition given back is taken by another replica within about this long.
# Settled, the leases are renewed every third of WORK_LEASE_SECONDS.
_REBALANCE_TICK_SECONDS = 0.5

# Entries left pending by this replica (an apply that failed, or a read whose answer was
# lost) are looked for at least this often even when none is known (a safety net).
_RECLAIM_SAFETY_SECONDS = 300.0

# How long a read of the streams blocks at a time (below the Redis socket timeout): a
# newly taken stream or stopping cancels it sooner.
_READ_BLOCK_MS = 4000

# An entry read from a stream: (stream, entry id, fields).
Entry = tuple[str, str, dict[bytes, bytes]]


class EventConsumer(BackgroundTask):
    """Reads the webhook events of the partitions this replica owns (consumer group)
    into per-conversation lanes; each lane applies its entries in order and acknowledges
    each once applied."""

    name = "event-consumer"

    def __init__(self, stage: EventStage, redis: aioredis.Redis) -> None:
        self.stage = stage
        self.ctx = stage.ctx
        self.redis = redis
        self.settings = stage.settings
        self.ownership = PartitionOwnership(
            EventLeases(redis),
            self.ctx.consumer,
            [event_stream(p) for p in range(self.settings.event_partitions)],
            self.settings.lease_ms,
        )
        self._lanes: list[asyncio.Queue[Entry]] = [
            asyncio.Queue() for _ in range(self.settings.event_lanes)
        ]
        # Entries read and not yet acknowledged (or left pending after a failure), by
        # (stream, id): ids repeat across streams.
        self._held: set[tuple[str, str]] = set()
        self._held_by_stream: Counter[str] = Counter()
        # Streams taken over → where their claim of pending entries goes on from.
        self._catching_up: dict[str, str] = {}
        self._groups: set[str] = set()
        self._room = asyncio.Event()
        self._taken = asyncio.Event()
        self._owned_changed = asyncio.Event()
        # The read of new entries in flight: cancelled when the streams change (or on
        # stopping) instead of two Event waiters raced against it on every read.
        self._reading_now: asyncio.Future[Any] | None = None
        # Entries this replica left pending (an apply that failed) → when they are tried
        # again (XAUTOCLAIM after the visibility timeout); not dispatched before that.
        # Streams with none are not reclaimed (issue 22: was XAUTOCLAIM × partitions
        # every VISIBILITY_TIMEOUT_SECONDS / 3), except by a rare safety net.
        self._waiting_retry: dict[tuple[str, str], float] = {}
        # A read was cancelled or failed: what Redis delivered to it may be pending for
        # this consumer without being dispatched; read our own pending entries first.
        self._reread_own = False

    async def ensure_group(self, stream: str = EVENTS_STREAM) -> None:
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def run(self, stopping: asyncio.Event) -> None:
        lanes = [
            asyncio.create_task(self._lane(queue), name=f"event-lane-{n}")
            for n, queue in enumerate(self._lanes)
        ]
        drained = asyncio.Event()
        keeper = asyncio.create_task(self._keep(stopping, drained), name="event-partitions")
        try:
            await self._read(stopping)
            # Stopping: read nothing more, apply what the lanes hold (still owned).
            await asyncio.gather(*(queue.join() for queue in self._lanes))
        finally:
            drained.set()
            await keeper
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _keep(self, stopping: asyncio.Event, drained: asyncio.Event) -> None:
        """Keeps the partitions' leases until the lanes are drained, then gives them back
        so that other replicas take them over at once."""
        while not drained.is_set():
            try:
                before = self._reading()
                taken = await self.ownership.tick(
                    lambda stream: self._held_by_stream[stream] > 0,
                    taking=not stopping.is_set(),
                )
                if self._reading() != before or taken:
                    # The reader is blocked on the streams it had: read the new set.
                    self._streams_changed()
                for stream in taken:
                    await self.ensure_group(stream)
                    self._catching_up[stream] = "0-0"
                if taken:
                    self._taken.set()
            except RedisError as exc:
                log.warning("event partitions: redis error, retrying: %s", exc)
            renew_every = self.settings.lease_ms / 3000
            await wait_any(
                drained,
                drained,
                renew_every
                if self.ownership.settled
                else min(renew_every, _REBALANCE_TICK_SECONDS),
            )
        try:
            await self.ownership.release_all()
        except RedisError as exc:
            log.warning("event partitions not released (they expire): %s", exc)

    def _reading(self) -> set[str]:
        return set(self.ownership.owned()) - self.ownership.giving_back

    def _streams_changed(self) -> None:
        """The reader is blocked on the streams it had: it reads the new set."""
        self._owned_changed.set()
        if self._reading_now is not None:
            self._reading_now.cancel()

    async def _cancel_read_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        if self._reading_now is not None:
            self._reading_now.cancel()

    async def _read(self, stopping: asyncio.Event) -> None:
        stop_watch = asyncio.create_task(self._cancel_read_on(stopping))
        try:
            await self._read_until(stopping)
        finally:
            stop_watch.cancel()

    async def _read_until(self, stopping: asyncio.Event) -> None:
        safety_at = time.monotonic() + _RECLAIM_SAFETY_SECONDS
        while not stopping.is_set():
            try:
                while not stopping.is_set():
                    room = self.settings.worker_batch - len(self._held)
                    if room <= 0:
                        # Full: wait for a lane to finish an entry.
                        self._room.clear()
                        await wait_any(self._room, stopping, 0.5)
                        continue
                    if self._catching_up:
                        await self._take_over(room)
                        continue
                    # Cleared before the streams are read: a change after it cancels the read.
                    self._owned_changed.clear()
                    streams = [
                        s for s in self.ownership.owned() if s not in self.ownership.giving_back
                    ]
                    if not streams:
                        self._taken.clear()
                        await wait_any(self._taken, stopping, 0.5)
                        continue
                    now = time.monotonic()
                    if now >= safety_at:
                        # Nothing known to be left pending: looked at anyway, seldom.
                        safety_at = now + _RECLAIM_SAFETY_SECONDS
                        for stream in streams:
                            await self._reclaim(stream, room)
                        continue
                    due = self._reclaim_due_streams(streams, now)
                    if due:
                        for stream in due:
                            await self._reclaim(stream, room)
                        continue
                    if self._reread_own:
                        self._reread_own = False
                        await self._read_own(streams)
                        continue
                    entries = await self._read_new(streams, room, stopping)
                    for raw_stream, items in cast(list[tuple[bytes, Any]], entries or []):
                        self._dispatch(raw_stream.decode(), items)
            except RedisError as exc:
                log.warning("event consumer: redis error, retrying: %s", exc)
                self._reread_own = True
                await asyncio.sleep(1.0)

    async def _read_new(self, streams: list[str], room: int, stopping: asyncio.Event) -> Any:
        """New entries of `streams`, blocking until some come; None when the streams
        this replica reads changed meanwhile (or it is stopping): the read is cancelled,
        and what Redis may have delivered to it is read again from our pending entries."""
        read = asyncio.ensure_future(
            self.redis.xreadgroup(
                WORKERS_GROUP,
                self.ctx.consumer,
                dict.fromkeys(streams, ">"),
                count=room,
                block=_READ_BLOCK_MS,
            )
        )
        self._reading_now = read
        if self._owned_changed.is_set() or stopping.is_set():
            read.cancel()
        try:
            await asyncio.wait([read])
        finally:
            self._reading_now = None
            if not read.done():  # this task itself was cancelled
                read.cancel()
                self._reread_own = True
                with contextlib.suppress(asyncio.CancelledError, RedisError):
                    await read
        if read.cancelled():
            self._reread_own = True
            return None
        return read.result()

    async def _read_own(self, streams: list[str]) -> None:
        """Entries delivered to this consumer and not acknowledged, that no lane holds
        and none waits to be retried: delivered to a read that was cancelled or whose
        answer was lost. Dispatched before anything newer, so they keep their order."""
        for stream in streams:
            start = "0-0"
            while True:
                entries = await self.redis.xreadgroup(
                    WORKERS_GROUP, self.ctx.consumer, {stream: start}, count=100
                )
                items = cast(list[tuple[bytes, Any]], entries or [])
                found = items[0][1] if items else []
                if not found:
                    break
                self._dispatch(stream, found)
                start = found[-1][0].decode()

    def _reclaim_due_streams(self, streams: list[str], now: float) -> list[str]:
        if not self._waiting_retry:
            return []
        due = {s for (s, _), at in self._waiting_retry.items() if at <= now}
        return [s for s in streams if s in due]

    async def _take_over(self, room: int) -> None:
        """Claims what the previous owner of a newly taken stream left pending, oldest
        first, before anything newer of that stream is read."""
        for stream, start in list(self._catching_up.items()):
            if not self.ownership.holds(stream):
                del self._catching_up[stream]
                continue
            following, items = await claim_pending(
                self.redis, stream, self.ctx.consumer, 0, start, room
            )
            if items:
                log.info("took over %d pending events of %s", len(items), stream)
                self._dispatch(stream, items, retry=True)
            if following == "0-0":
                del self._catching_up[stream]
            else:
                self._catching_up[stream] = following
            return

    async def _reclaim(self, stream: str, room: int) -> None:
        """Entries of this stream left pending after a failure: tried again."""
        idle_ms = int(self.settings.visibility_timeout_seconds * 1000)
        following, items = await claim_pending(
            self.redis, stream, self.ctx.consumer, idle_ms, "0-0", room
        )
        now = time.monotonic()
        for key, at in list(self._waiting_retry.items()):
            if key[0] == stream and at <= now:
                if following == "0-0":
                    # Claimed just now (dispatched below), or no longer pending (parked,
                    # or applied by another replica): no longer waiting here.
                    del self._waiting_retry[key]
                else:
                    # More pending than this replica has room for: again shortly.
                    self._waiting_retry[key] = now + 1.0
        if items:
            log.info("reclaimed %d pending events of %s", len(items), stream)
            self._dispatch(stream, items, retry=True)

    def _left_pending(self, stream: str, stream_id: str) -> None:
        """Not applied, still pending for this consumer: tried again after the
        visibility timeout (XAUTOCLAIM by idle time)."""
        at = time.monotonic() + self.settings.visibility_timeout_seconds
        self._waiting_retry[(stream, stream_id)] = at

    def _dispatch(
        self, stream: str, items: list[tuple[bytes, dict[bytes, bytes]]], retry: bool = False
    ) -> None:
        for raw_id, fields in items:
            stream_id = raw_id.decode()
            if (stream, stream_id) in self._held:
                continue  # one of ours, still in its lane
            if retry:
                self._waiting_retry.pop((stream, stream_id), None)
            elif (stream, stream_id) in self._waiting_retry:
                continue  # failed: tried again after the visibility timeout
            self._held.add((stream, stream_id))
            self._held_by_stream[stream] += 1
            key = ""
            if fields:  # empty: deleted meanwhile, acknowledged by its lane
                try:
                    # Events with one key are applied in stream order (one partition).
                    key = routing_key(json.loads(fields[b"e"]))
                except (ValueError, KeyError):
                    key = stream_id  # unreadable: its own lane fails and parks it
            lane = zlib.crc32(key.encode()) % len(self._lanes)
            self._lanes[lane].put_nowait((stream, stream_id, fields))

    async def _lane(self, queue: asyncio.Queue[Entry]) -> None:
        while True:
            stream, stream_id, fields = await queue.get()
            try:
                if self.ownership.holds(stream):
                    if not await self._handle(stream, stream_id, fields):
                        self._left_pending(stream, stream_id)
                # Else the partition was lost: the entry stays pending for its new owner.
            except PartitionLost:
                log.warning("event %s of %s left to the partition's new owner", stream_id, stream)
            except RedisError as exc:
                # Left pending: reclaimed after the visibility timeout.
                log.warning("event %s not applied (redis error): %s", stream_id, exc)
                self._left_pending(stream, stream_id)
            except Exception:
                log.exception("event %s: unexpected failure", stream_id)
                self._left_pending(stream, stream_id)
            finally:
                self._held.discard((stream, stream_id))
                self._held_by_stream[stream] -= 1
                self._room.set()
                queue.task_done()

    async def _handle(self, stream: str, stream_id: str, fields: dict[bytes, bytes]) -> bool:
        """Applies and acknowledges the entry; False when it failed (left pending, or
        parked: then no longer pending, and the reclaim finds nothing). A message's apply
        script acknowledges it itself; other entries are acknowledged here."""
        failure_id = WorkFailures.item_id("event", failure_member(stream, stream_id))
        ack = Ack(WORKERS_GROUP, failure_id)
        if fields:
            try:
                data = json.loads(fields[b"e"])
                with flow(data.pop("request_id", "")):
                    if data.get("kind") == "lead":
                        await self.stage.apply_lead_event(LeadEvent.from_dict(data))
                    else:
                        known = fields.get(b"c")
                        await self.stage.apply_event(
                            stream_id,
                            MessageEvent.from_dict(data),
                            stream=stream,
                            owner=self.ctx.consumer,
                            ack=ack,
                            known=known.decode() if known else "",
                        )
            except (RedisError, PartitionLost) as exc:
                if ack.done:
                    # Recorded and acknowledged: what followed the apply is not tried again.
                    log.warning("event %s: failed after it was applied: %s", stream_id, exc)
                    return True
                raise
            except Exception as exc:
                if ack.done:
                    # Recorded and acknowledged: a retry would find it a duplicate and do
                    # nothing more, as before the apply acknowledged it itself.
                    log.exception("event %s: failed after it was applied", stream_id)
                    return True
                await self._failed(stream, stream_id, fields, exc)
                return False
        if ack.done:
            return True
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, WORKERS_GROUP, stream_id)
            pipe.xdel(stream, stream_id)
            pipe.hdel(self.ctx.failures.failing_key, failure_id)
            await pipe.execute()
        return True

    async def _failed(
        self, stream: str, stream_id: str, fields: dict[bytes, bytes], exc: Exception
    ) -> None:
        """Left pending, the entry is reclaimed after the visibility timeout; parked
        after MAX_EVENT_ATTEMPTS. One ERROR line per failure; the traceback once."""
        reason = describe(exc)
        visibility_ms = int(self.settings.visibility_timeout_seconds * 1000)
        outcome = await self.ctx.failures.entry_failed(
            "event",
            stream,
            WORKERS_GROUP,
            stream_id,
            fields[b"e"].decode(),
            reason,
            self.settings.max_event_attempts,
            visibility_ms,
            member=failure_member(stream, stream_id),
        )
        extra = {"work": "event", "item": stream_id, "attempt": outcome.attempts}
        if outcome.parked:
            await self.ctx.bots.count("work_dead_lettered")
            message = f"event {stream_id} parked as a dead letter after {outcome.attempts} tries"
        else:
            message = (
                f"event {stream_id} failed (try {outcome.attempts}), tried again in about "
                f"{visibility_ms / 1000:.0f} s"
            )
        log.error("%s: %s", message, reason, extra=extra, exc_info=outcome.attempts == 1)


def failure_member(stream: str, stream_id: str) -> str:
    """An event's name in the failure records: entry ids repeat across streams."""
    return stream_id if stream == EVENTS_STREAM else f"{stream}/{stream_id}"


async def claim_pending(
    redis: aioredis.Redis, stream: str, consumer: str, idle_ms: int, start: str, count: int
) -> tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Entries of `stream` pending for at least `idle_ms`, from `start`, now this
    consumer's; and where the next claim goes on from ('0-0': none left)."""
    result = await redis.xautoclaim(
        stream, WORKERS_GROUP, consumer, min_idle_time=idle_ms, start_id=start, count=count
    )
    if not result:
        return "0-0", []
    following = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
    return following, cast(list[tuple[bytes, dict[bytes, bytes]]], result[1])
