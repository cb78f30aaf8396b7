"""Partitioned event streams against a real Redis: events of one conversation go to one
stream, each stream is owned by one replica at a time (fair share, takeover of a dead
owner's partitions and of its pending entries), and a replica that lost its lease
applies nothing."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import now_ms
from services.conversation.stages.event_partitions import PartitionOwnership
from services.conversation.stages.event_reader import claim_pending
from services.conversation.store.conversations import Applied, ConversationStore, Incoming
from services.conversation.store.keys import (
    WORKERS_GROUP,
    conversation_key,
    event_partition,
    event_stream,
    history_key,
    routing_key,
    seen_key,
)
from services.conversation.store.leases import EventLeases

PARTITIONS = 8
LEASE_MS = 400


def replica(redis: aioredis.Redis, name: str) -> PartitionOwnership:
    streams = [event_stream(p) for p in range(PARTITIONS)]
    return PartitionOwnership(EventLeases(redis), name, streams, LEASE_MS)


def idle(_stream: str) -> bool:
    return False


async def rounds(*replicas: PartitionOwnership, times: int = 3) -> None:
    for _ in range(times):
        for each in replicas:
            await each.tick(idle, legacy_waiting=False)


async def test_a_conversations_events_all_go_to_its_partition_stream(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, event_partitions=PARTITIONS)
    events = [{"lead_id": 7, "chat_id": "c", "text": str(n)} for n in range(5)]
    events.append({"lead_id": 0, "chat_id": "only-a-chat", "text": "x"})
    await store.ingest(
        1,
        [Incoming(seen_key(f"m{n}"), json.dumps(e), routing_key(e)) for n, e in enumerate(events)],
    )
    lead_stream = event_stream(event_partition(routing_key(events[0]), PARTITIONS))
    chat_stream = event_stream(event_partition("chat:only-a-chat", PARTITIONS))

    def texts(entries: Any) -> list[str]:
        return [json.loads(fields[b"e"])["text"] for _, fields in entries]

    assert texts(await redis.xrange(lead_stream))[:5] == ["0", "1", "2", "3", "4"]
    assert "x" in texts(await redis.xrange(chat_stream))
    assert lead_stream == f"conv:events:{{p{event_partition('lead:7', PARTITIONS)}}}"


async def test_partitions_spread_fairly_as_replicas_join(redis: aioredis.Redis) -> None:
    first = replica(redis, "a")
    await rounds(first)
    assert len(first.owned()) == PARTITIONS
    second, third = replica(redis, "b"), replica(redis, "c")
    await rounds(first, second, third)
    share = math.ceil(PARTITIONS / 3)
    owned = [set(r.owned()) for r in (first, second, third)]
    assert all(len(mine) <= share for mine in owned)
    assert set.union(*owned) == {event_stream(p) for p in range(PARTITIONS)}
    assert not (owned[0] & owned[1]) and not (owned[1] & owned[2]) and not (owned[0] & owned[2])
    for stream in owned[1]:
        assert await EventLeases(redis).owner(stream) == "b"


async def test_a_partition_still_being_applied_is_given_back_only_once_idle(
    redis: aioredis.Redis,
) -> None:
    first, second = replica(redis, "a"), replica(redis, "b")
    await first.tick(idle, legacy_waiting=False)
    await second.tick(idle, legacy_waiting=False)
    await first.tick(lambda stream: True, legacy_waiting=False)  # every lane busy
    assert len(first.owned()) == PARTITIONS
    assert len(first.giving_back) == PARTITIONS // 2
    await first.tick(idle, legacy_waiting=False)
    assert len(first.owned()) == PARTITIONS // 2


async def test_a_dead_replicas_partitions_are_taken_over_after_its_lease(
    redis: aioredis.Redis,
) -> None:
    alive, dead = replica(redis, "alive"), replica(redis, "dead")
    await rounds(alive, dead)
    theirs = set(dead.owned())
    assert theirs and not theirs & set(alive.owned())
    await alive.tick(idle, legacy_waiting=False)
    assert not theirs & set(alive.owned()), "not before the lease ran out"
    await asyncio.sleep(LEASE_MS / 1000 + 0.05)  # "dead" stops renewing
    taken = await alive.tick(idle, legacy_waiting=False)
    assert theirs <= set(taken)
    assert len(alive.owned()) == PARTITIONS


async def test_pending_entries_of_a_dead_owner_are_claimed_in_order_by_the_new_one(
    redis: aioredis.Redis,
) -> None:
    stream = event_stream(0)
    await redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(stream, {"e": json.dumps({"n": n})}) for n in range(5)]
    await redis.xreadgroup(WORKERS_GROUP, "dead", {stream: ">"}, count=3)
    following, items = await claim_pending(redis, stream, "alive", 0, "0-0", 10)
    assert following == "0-0"
    assert [entry_id for entry_id, _ in items] == ids[:3]
    pending = await redis.xpending_range(stream, WORKERS_GROUP, "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"alive"}
    read = cast(Any, await redis.xreadgroup(WORKERS_GROUP, "alive", {stream: ">"}, count=10))
    assert [entry_id for entry_id, _ in read[0][1]] == ids[3:]


async def test_a_frozen_owner_that_lost_its_lease_applies_nothing(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, event_partitions=PARTITIONS)
    stream = event_stream(0)
    frozen, successor = replica(redis, "frozen"), replica(redis, "successor")
    await frozen.tick(idle, legacy_waiting=False)
    entry = cast(bytes, await redis.xadd(stream, {"e": "{}"})).decode()
    await asyncio.sleep(LEASE_MS / 1000 + 0.05)
    assert not frozen.holds(stream), "its own clock tells the lanes first"
    await successor.tick(idle, legacy_waiting=False)
    assert successor.holds(stream)

    async def apply(owner: str) -> Applied:
        return await store.apply_message(
            conversation_id="conv-1",
            message_id="m1",
            inbox_entry="{}",
            history_entry="{}",
            at_ms=now_ms(),
            due_ms=now_ms(),
            lead_id=1,
            contact_id=0,
            chat_id="",
            talk_id=0,
            to_inbox=True,
            history_max=10,
            stream_id=entry,
            stream=stream,
            owner=owner,
        )

    assert await apply("frozen") == Applied.NOT_OWNER
    assert not await redis.exists(conversation_key("conv-1"))
    assert await apply("successor") == Applied.APPLIED
    # Applied again (the old owner was caught mid-apply): recorded once.
    assert await apply("successor") == Applied.DUPLICATE
    assert await redis.llen(history_key("conv-1")) == 1


async def test_the_stream_of_earlier_versions_is_drained_under_a_lease(
    redis: aioredis.Redis,
) -> None:
    first, second = replica(redis, "a"), replica(redis, "b")
    taken = await first.tick(idle, legacy_waiting=True)
    assert "conv:events" in taken
    assert "conv:events" not in await second.tick(idle, legacy_waiting=True)
    await first.tick(idle, legacy_waiting=False)  # empty now: given back
    assert not first.holds("conv:events")
    assert await EventLeases(redis).owner("conv:events") == ""
