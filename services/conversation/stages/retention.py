"""Housekeeping: personal data past its retention time (DATA_RETENTION_DAYS)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from services.common.grpc_server import BackgroundTask
from services.conversation.store.privacy import Privacy

if TYPE_CHECKING:
    from services.conversation.stages import StageContext

log = logging.getLogger(__name__)


class RetentionSweep(BackgroundTask):
    """Personal data has an end: every DATA_RETENTION_SWEEP_SECONDS, each replica erases
    what is past DATA_RETENTION_DAYS (store.Privacy.sweep). Keys expire by themselves;
    this takes their conversations out of the global indexes and queues, and removes
    data written before retention was set. Replicas sweeping at once is harmless."""

    name = "retention-sweep"

    def __init__(self, ctx: StageContext) -> None:
        self.store = ctx.store
        self.interval = ctx.settings.data_retention_sweep_seconds
        self.privacy = Privacy(
            ctx.store.redis, ctx.store.retention_seconds, ctx.store.event_partitions
        )

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.interval
        while not stopping.is_set() and self.store.retention_seconds:
            try:
                counts = await self.privacy.sweep()
                if any(counts.values()):
                    log.info(
                        "personal data past its retention time erased",
                        extra={"erased": dict(counts)},
                    )
            except RedisError as exc:
                log.warning("retention sweep: redis error: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass
