"""Batching across gateway replicas rests when idle (issue 22), against a real Redis: once
no call came for a while the holder gives the dispatch lease back and every replica's
loops stop (they sent Redis ~3 commands a second forever after the first call); the next
call, on any replica, starts them again and is answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.kommo_gateway import handoff as handoff_module
from services.kommo_gateway.ratelimit import Priority
from services.kommo_gateway.store import BATCH_LEASE
from tests.integration.test_coalescer_replicas import _eventually, _recorder, _replicas

REST_AFTER = 0.5


async def calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


async def test_idle_replicas_rest_and_wake_on_the_next_call(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff_module, "_REST_AFTER_SECONDS", REST_AFTER)
    sent: list[tuple[str, list[Any]]] = []
    async with _replicas(redis_url, 2) as (first, second):
        reads = [
            r.coalescer("read", Priority.REPLY, _recorder(sent, "read")) for r in (first, second)
        ]
        assert await reads[0].submit(1) == 1  # the first replica takes the lease
        assert first.handoff.holds
        assert await reads[1].submit(2) == 2  # handed over to it, answered through Redis

        async def rested() -> bool:
            return (
                not first.handoff._loops
                and not second.handoff._loops
                and not await redis.exists(BATCH_LEASE)
            )

        await _eventually(rested, "both replicas resting, the lease given back")
        before = await calls(redis)
        await asyncio.sleep(1.0)
        assert await calls(redis) - before == 0  # resting: nothing sent to Redis

        # Any replica's next call starts it again: this one takes the free lease.
        assert await reads[1].submit(3) == 3
        assert second.handoff.holds
        assert await reads[0].submit(4) == 4  # handed over to the new holder
    assert sorted(item for _, batch in sent for item in batch) == [1, 2, 3, 4]


async def test_only_a_replica_waiting_for_an_answer_reads_the_answers(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """The holder answers its own callers in memory: it never reads the answers' stream;
    a replica reads it only while an item it handed over waits (issue 22: an XREAD every
    second on every replica while calls flowed)."""
    sent: list[tuple[str, list[Any]]] = []
    async with _replicas(redis_url, 2) as (first, second):
        reads = [
            r.coalescer("read", Priority.REPLY, _recorder(sent, "read")) for r in (first, second)
        ]
        assert await reads[0].submit(1) == 1
        assert first.handoff.holds
        before = (await redis.info("commandstats")).get("cmdstat_xread", {}).get("calls", 0)
        for n in range(2, 5):
            assert await reads[0].submit(n) == n
        await asyncio.sleep(1.2)  # a follower would have read at least once meanwhile
        after = (await redis.info("commandstats")).get("cmdstat_xread", {}).get("calls", 0)
        assert after == before, "the holder read the answers"
        assert await reads[1].submit(5) == 5  # handed over: read until answered

        async def stopped() -> bool:
            following = second.handoff._following
            return following is None or following.done()

        await _eventually(stopped, "the follower stops once its answer came")
    assert sorted(item for _, batch in sent for item in batch) == [1, 2, 3, 4, 5]
