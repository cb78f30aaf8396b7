"""Prometheus gauges of the conversation service: queue depths and bot states."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.common.due_queue import now_ms
from services.common.grpc_server import BackgroundTask
from services.common.metrics import BOT_STATES, QUEUE_DEPTH
from services.conversation.engine import Engine
from services.conversation.store.keys import event_streams
from services.conversation.store.operations import Operations

log = logging.getLogger(__name__)


class GaugeUpdater(BackgroundTask):
    """Queue depths and conversations by bot state, for Prometheus, every few seconds; each
    read costs the same whatever the number of conversations."""

    name = "gauges"
    _INTERVAL_SECONDS = 5.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, stopping: asyncio.Event) -> None:
        redis = self.engine.store.redis
        ops = Operations(redis, self.engine.store.retention_seconds)
        while not stopping.is_set():
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.zcard(self.engine.store.turns.key)
                    pipe.zcard(self.engine.store.replies.key)
                    for stream in event_streams(self.engine.store.event_partitions):
                        pipe.xlen(stream)
                    turns, replies, *streams = await pipe.execute()
                events = sum(streams)
                outbox, dead = await ops.queue_sizes()
                work = await self.engine.failures.counts(now_ms())
                for queue, depth in (
                    ("events", events),
                    ("turns", turns),
                    ("replies", replies),
                    ("n8n_outbox", outbox),
                    ("dead_letters", dead),
                    ("work_failing", work.failing),
                    ("work_dead_letters", work.dead),
                ):
                    QUEUE_DEPTH.labels(queue).set(depth)
                # Kept as states change (store.state_counts): no conversation is read.
                counts = await self.engine.store.state_counts()
                for state in ("active", "paused"):
                    BOT_STATES.labels(state).set(counts[state])
            except RedisError as exc:
                log.debug("gauges not updated: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._INTERVAL_SECONDS)
            except TimeoutError:
                pass
