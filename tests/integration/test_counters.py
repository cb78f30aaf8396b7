"""The operator's counters: each for the life of the data and in the current five-minute
bucket, which expires on its own; a reply's time in the bucket only. One call to Redis."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from services.conversation import series
from services.conversation.store import STATS, BotStore


async def test_counters_go_to_the_stats_and_the_current_bucket(redis: aioredis.Redis) -> None:
    bots = BotStore(redis)
    await bots.count("messages_customer")
    await bots.count_many({"messages_customer": 2, "takeovers_auto": 1})
    await bots.count_many({})
    assert await bots.counters() == {"messages_customer": 3, "takeovers_auto": 1}
    bucket = series.bucket_key(series.bucket_start(time.time()))
    assert await redis.hgetall(bucket) in (
        {b"messages_customer": b"3", b"takeovers_auto": b"1"},
        {},  # the five minutes turned meanwhile: nothing to compare
    )
    ttl = await redis.ttl(bucket)
    assert 0 < ttl <= series.KEPT_SECONDS or not await redis.exists(bucket)


async def test_a_reply_time_goes_to_the_bucket_only(redis: aioredis.Redis) -> None:
    bots = BotStore(redis)
    await bots.record_reply_seconds(3.77)
    await bots.record_reply_seconds(1.0)
    assert not await redis.exists(STATS)
    window = (await bots.time_series(1)).window()
    assert window.replies == 2
    assert abs(window.reply_mean_seconds - 2.385) < 0.001
    assert abs(window.reply_p95_seconds - 3.77) / 3.77 < series.RELATIVE_ERROR


async def test_a_bucket_gets_its_lifetime_once(redis: aioredis.Redis) -> None:
    bots = BotStore(redis)
    await bots.count("messages_out")
    bucket = series.bucket_key(series.bucket_start(time.time()))
    await redis.expire(bucket, 100)
    await bots.count("messages_out")
    assert 0 < await redis.ttl(bucket) <= 100 or not await redis.exists(bucket)


async def test_a_delivered_envelope_is_counted_and_takes_n8ns_failing_flag_down(
    redis: aioredis.Redis,
) -> None:
    from services.common.due_queue import Claim
    from services.conversation.store import N8N_FAILING, OUTBOX_DUE, ConversationStore

    store = ConversationStore(redis)
    await redis.zadd(OUTBOX_DUE, {"ev-1": 1, "ev-2": 1})
    assert await store.outbox_delivered(Claim("ev-1", 1)) is False
    await redis.set(N8N_FAILING, "1")
    assert await store.outbox_delivered(Claim("ev-2", 1)) is True
    assert not await redis.exists(N8N_FAILING)
    assert await redis.zcard(OUTBOX_DUE) == 0
    assert (await BotStore(redis).counters())["forwarded"] == 2
