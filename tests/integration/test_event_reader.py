"""The event consumer's reader against a real Redis (issue 22): it blocks on the streams
it owns instead of reading every 0.5 s, looks for failed entries only when it left some
(not XAUTOCLAIM × partitions every few seconds), and what Redis delivered to a read that
was cancelled (its partitions changed) or whose answer was lost is applied before anything
newer, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.due_queue import RetryPolicy, WorkFailures
from services.conversation.stages.event_reader import EventConsumer
from services.conversation.store.keys import event_partition, event_stream, routing_key
from services.conversation.webhook_events import LeadEvent

PARTITIONS = 2


class Stage:
    """Records the lead events it is given (what a lane applies), in order."""

    def __init__(self, redis: aioredis.Redis, visibility: float) -> None:
        self.applied: list[int] = []
        self.failing: set[int] = set()
        self.tries: dict[int, int] = {}
        self.settings = SimpleNamespace(
            event_partitions=PARTITIONS,
            event_lanes=4,
            lease_ms=3000,
            worker_batch=64,
            visibility_timeout_seconds=visibility,
            max_event_attempts=10,
        )
        self.ctx = SimpleNamespace(
            consumer="reader-test",
            settings=self.settings,
            failures=WorkFailures(redis, "test:reader", RetryPolicy(10, 1, 1)),
            bots=SimpleNamespace(count=self._count),
        )

    async def _count(self, _what: str) -> None:
        return None

    async def apply_lead_event(self, event: LeadEvent) -> None:
        self.tries[event.changed_at] = self.tries.get(event.changed_at, 0) + 1
        if event.changed_at in self.failing:
            raise RuntimeError("a bug")
        self.applied.append(event.changed_at)


def lead_event(lead_id: int, n: int) -> dict[Any, Any]:
    event = LeadEvent("status", lead_id, 1, 0, 1, 1, n).to_dict()
    return {"e": json.dumps(event)}


def stream_of(lead_id: int) -> str:
    return event_stream(event_partition(routing_key({"lead_id": lead_id}), PARTITIONS))


@contextlib.asynccontextmanager
async def consuming(
    redis: aioredis.Redis, stage: Stage, consumer: EventConsumer | None = None
) -> AsyncIterator[EventConsumer]:
    consumer = consumer or EventConsumer(stage, redis)  # type: ignore[arg-type]
    for partition in range(PARTITIONS):
        await consumer.ensure_group(event_stream(partition))
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    try:
        yield consumer
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)


async def until(check: Any, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_entries_are_applied_at_once_and_idle_reading_is_rare(
    redis: aioredis.Redis,
) -> None:
    stage = Stage(redis, visibility=15)
    async with consuming(redis, stage) as consumer:
        await until(lambda: len(consumer.ownership.owned()) == PARTITIONS, "partitions owned")
        await asyncio.sleep(0.3)
        before = await calls(redis)
        await asyncio.sleep(3)
        after = await calls(redis)
        # Blocking 4 s a read: at most one read began in 3 s (was 6), no XAUTOCLAIM (was 2).
        assert after.get("xreadgroup", 0) - before.get("xreadgroup", 0) <= 1
        assert after.get("xautoclaim", 0) == before.get("xautoclaim", 0)
        began = time.monotonic()
        await redis.xadd(stream_of(7), lead_event(7, 1))
        await until(lambda: stage.applied == [1], "the entry applied")
        assert time.monotonic() - began < 2  # not at the end of the blocking read


class Lossy:
    """Redis, except that one read's answer is lost on its way back (after Redis
    delivered the entries to the consumer), as when a connection drops."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.lose = False
        self.lost: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._redis.xreadgroup(*args, **kwargs)
        if self.lose and result:
            self.lose = False
            self.lost.append(result)
            raise RedisConnectionError("connection lost while reading the answer")
        return result


async def test_what_a_lost_read_was_given_is_applied_first_in_order(
    redis: aioredis.Redis,
) -> None:
    stage = Stage(redis, visibility=15)
    stream = stream_of(7)
    lossy = Lossy(redis)
    consumer = EventConsumer(stage, lossy)  # type: ignore[arg-type]
    async with consuming(redis, stage, consumer):
        await until(lambda: len(consumer.ownership.owned()) == PARTITIONS, "partitions owned")
        await asyncio.sleep(0.3)
        lossy.lose = True
        async with redis.pipeline(transaction=True) as pipe:
            for n in (1, 2, 3):
                pipe.xadd(stream, lead_event(7, n))
            await pipe.execute()
        await until(lambda: bool(lossy.lost), "a read lost")
        await redis.xadd(stream, lead_event(7, 4))
        await until(lambda: len(stage.applied) == 4, "all four applied")
    # Delivered to the lost read, pending: read again before anything newer.
    assert stage.applied == [1, 2, 3, 4]


async def test_a_change_of_partitions_cancels_the_blocking_read(redis: aioredis.Redis) -> None:
    stage = Stage(redis, visibility=15)
    async with consuming(redis, stage) as consumer:
        await until(lambda: len(consumer.ownership.owned()) == PARTITIONS, "partitions owned")
        await asyncio.sleep(0.3)
        before = await calls(redis)
        consumer._streams_changed()  # as the keeper does when it took or gave back one
        await asyncio.sleep(0.5)
        # The blocking read (4 s) was cancelled and the new set read at once.
        after = await calls(redis)
        assert after.get("xreadgroup", 0) > before.get("xreadgroup", 0)
        for n in (1, 2):
            await redis.xadd(stream_of(7), lead_event(7, n))
        await until(lambda: stage.applied == [1, 2], "both applied", seconds=3)


async def test_a_failed_entry_is_tried_again_after_the_visibility_timeout(
    redis: aioredis.Redis,
) -> None:
    stage = Stage(redis, visibility=1.0)
    stage.failing.add(1)
    async with consuming(redis, stage) as consumer:
        await until(lambda: len(consumer.ownership.owned()) == PARTITIONS, "partitions owned")
        await redis.xadd(stream_of(7), lead_event(7, 1))
        await until(lambda: stage.tries.get(1) == 1, "the first try")
        await asyncio.sleep(0.5)
        assert stage.tries[1] == 1  # not before the visibility timeout
        stage.failing.clear()
        await until(lambda: stage.applied == [1], "tried again and applied", seconds=8)
    assert stage.tries[1] == 2
