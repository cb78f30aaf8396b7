"""The conversation service's Prometheus gauges: every queue depth and the conversations
by bot state, read in one Redis call a round."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis

from services.common.due_queue import RetryPolicy, WorkFailures
from services.common.metrics import BOT_STATES, QUEUE_DEPTH
from services.conversation.gauges import GaugeUpdater
from services.conversation.store import (
    BOT_STATE_AWAITING,
    BOT_STATE_PAUSED,
    BOT_STATES_SINCE,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    WORK_FAILURES,
    ConversationStore,
)
from services.conversation.store import BOT_STATES as FILED
from services.conversation.store.keys import event_streams


def gauge(metric: Any, label: str) -> float:
    return float(metric.labels(label)._value.get())


async def test_one_round_sets_every_gauge(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, event_partitions=4)
    failures = WorkFailures(redis, WORK_FAILURES, RetryPolicy(5, 1, 60))
    await redis.zadd(store.turns.key, {"c1": 1, "c2": 1})
    await redis.zadd(store.replies.key, {"r1": 1})
    await redis.zadd(OUTBOX_DUE, {"e1": 1, "e2": 1, "e3": 1})
    await redis.zadd(OUTBOX_DEAD, {"e4": 1})
    await redis.hset(failures.failing_key, "turn:c9", "{}")
    streams = event_streams(4)
    for stream in (streams[0], streams[3], streams[3]):
        await redis.xadd(stream, {"e": "{}"})
    await redis.set(BOT_STATES_SINCE, 1)
    await redis.zadd(FILED, {"a1": 0, "a2": 0, "p1": BOT_STATE_PAUSED, "w1": BOT_STATE_AWAITING})
    updater = GaugeUpdater(SimpleNamespace(store=store, failures=failures))  # type: ignore[arg-type]
    stopping = asyncio.Event()
    task = asyncio.create_task(updater.run(stopping))
    await asyncio.sleep(0.3)
    stopping.set()
    await task
    depths = {
        queue: gauge(QUEUE_DEPTH, queue)
        for queue in (
            "events", "turns", "replies", "n8n_outbox", "dead_letters", "work_failing",
            "work_dead_letters",
        )
    }  # fmt: skip
    assert depths == {
        "events": 3,
        "turns": 2,
        "replies": 1,
        "n8n_outbox": 3,
        "dead_letters": 1,
        "work_failing": 1,
        "work_dead_letters": 0,
    }
    # An awaiting conversation is active too (its bot is on).
    assert (gauge(BOT_STATES, "active"), gauge(BOT_STATES, "paused")) == (3, 1)
