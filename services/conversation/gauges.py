"""Prometheus gauges of the conversation service: queue depths and bot states."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.common.grpc_server import BackgroundTask
from services.common.metrics import BOT_STATES as BOT_STATES_GAUGE
from services.common.metrics import QUEUE_DEPTH
from services.conversation.engine import Engine
from services.conversation.store.keys import (
    BOT_STATE_AWAITING,
    BOT_STATE_PAUSED,
    BOT_STATES,
    BOT_STATES_SINCE,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    event_streams,
)
from services.conversation.store.scripts import register

log = logging.getLogger(__name__)


class GaugeUpdater(BackgroundTask):
    """Queue depths and conversations by bot state, for Prometheus, every few seconds: one
    Redis call (store/lua/gauge_readings.lua), whatever the number of conversations —
    this is most of what an idle stack asks Redis."""

    name = "gauges"
    _INTERVAL_SECONDS = 5.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, stopping: asyncio.Event) -> None:
        store, failures = self.engine.store, self.engine.failures
        readings = register(store.redis, "gauge_readings")
        keys = [
            store.turns.key,
            store.replies.key,
            OUTBOX_DUE,
            OUTBOX_DEAD,
            failures.failing_key,
            failures.dead_key,
            BOT_STATES,
            BOT_STATES_SINCE,
            *event_streams(store.event_partitions),
        ]
        while not stopping.is_set():
            try:
                answer = await readings(keys=keys, args=[BOT_STATE_PAUSED, BOT_STATE_AWAITING])
                turns, replies, outbox, dead, failing, work_dead, events, filed, *states = [
                    int(x) for x in answer
                ]
                for queue, depth in (
                    ("events", events),
                    ("turns", turns),
                    ("replies", replies),
                    ("n8n_outbox", outbox),
                    ("dead_letters", dead),
                    ("work_failing", failing),
                    ("work_dead_letters", work_dead),
                ):
                    QUEUE_DEPTH.labels(queue).set(depth)
                if filed:
                    active, paused = states[0], states[1]
                else:
                    # Data from before BOT_STATES: filed once (store.state_counts).
                    counts = await store.state_counts()
                    active, paused = counts["active"], counts["paused"]
                BOT_STATES_GAUGE.labels("active").set(active)
                BOT_STATES_GAUGE.labels("paused").set(paused)
            except RedisError as exc:
                log.debug("gauges not updated: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._INTERVAL_SECONDS)
            except TimeoutError:
                pass
