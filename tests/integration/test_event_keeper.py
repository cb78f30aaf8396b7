"""The event partitions' keeper in one call a round (issue 22), against a real Redis: its
heartbeat, every lease it holds renewed (or found lost) and the old stream's length, in
one script — was a transaction, one script per lease and an XLEN every third of a lease."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.conversation.stages.event_partitions import PartitionOwnership
from services.conversation.store.keys import EVENTS_STREAM, event_owner_key, event_stream
from services.conversation.store.leases import EventLeases

PARTITIONS = 16
LEASE_MS = 2000


def replica(redis: aioredis.Redis, name: str) -> PartitionOwnership:
    streams = [event_stream(p) for p in range(PARTITIONS)]
    return PartitionOwnership(EventLeases(redis), name, streams, LEASE_MS)


def idle(_stream: str) -> bool:
    return False


async def calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_settled_round_is_one_call_renewing_every_lease(redis: aioredis.Redis) -> None:
    one = replica(redis, "one")
    await one.tick(idle)  # takes all 16
    assert len(one.owned()) == PARTITIONS
    assert one.settled
    await asyncio.sleep(0.6)  # without a renewal, 1.4 s would be left
    before = await calls(redis)
    assert await one.tick(idle) == []
    after = await calls(redis)
    # One EVALSHA (the INFO of `calls` aside); the commands it ran inside are counted too.
    sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert sent.pop("evalsha") == 1
    assert sent.pop("info") == 1
    assert sent.pop("get") == PARTITIONS and sent.pop("pexpire") == PARTITIONS
    assert set(sent) <= {"zadd", "zremrangebyscore", "zcard", "xlen"}
    for partition in range(PARTITIONS):
        assert await redis.pttl(event_owner_key(event_stream(partition))) > LEASE_MS - 300
    assert len(one.owned()) == PARTITIONS


async def test_a_lease_lost_meanwhile_is_dropped_and_taken_again_when_free(
    redis: aioredis.Redis,
) -> None:
    one = replica(redis, "one")
    await one.tick(idle)
    lost = event_stream(3)
    await redis.set(event_owner_key(lost), "someone-else", px=LEASE_MS)
    await one.tick(idle)
    assert lost not in one.owned()
    assert await redis.get(event_owner_key(lost)) == b"someone-else"  # not renewed by us
    await redis.delete(event_owner_key(lost))  # that one died and its lease ran out
    assert await one.tick(idle) == [lost]


async def test_the_old_stream_is_taken_while_it_holds_entries(redis: aioredis.Redis) -> None:
    one = replica(redis, "one")
    await one.tick(idle)
    assert EVENTS_STREAM not in one.owned()
    await redis.xadd(EVENTS_STREAM, {"e": "{}"})
    assert EVENTS_STREAM in await one.tick(idle)  # its length read in the same call
    await redis.delete(EVENTS_STREAM)
    await one.tick(idle)
    assert EVENTS_STREAM not in one.owned()  # empty: given back


async def test_two_replicas_share_the_partitions(redis: aioredis.Redis) -> None:
    one, two = replica(redis, "one"), replica(redis, "two")
    for _ in range(3):
        await one.tick(idle)
        await two.tick(idle)
    assert len(one.owned()) == len(two.owned()) == PARTITIONS // 2
    assert not set(one.owned()) & set(two.owned())
