"""Every Redis key of the scheduling service."""

from __future__ import annotations

import time
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, text, text_map

OUTBOX_DUE = "sched:outbox:due"  # requests to deliver to n8n, by next attempt
# Kept while they may be asked about: 90 days.
REQUEST_TTL_SECONDS = 90 * 24 * 3600


def request_key(request_id: str) -> str:
    return f"sched:req:{request_id}"


def dedupe_key(lead_id: int, slot: str) -> str:
    return f"sched:dedupe:{lead_id}:{slot}"


class SchedulingStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.outbox = DueQueue(redis, OUTBOX_DUE)

    async def claim_slot(self, lead_id: int, slot: str, request_id: str, ttl: int) -> str | None:
        """Reserve (lead, slot) for this request; the earlier request's id if taken."""
        key = dedupe_key(lead_id, slot)
        if await self.redis.set(key, request_id, nx=True, ex=ttl):
            return None
        existing = await self.redis.get(key)
        return text(existing) if existing else None

    async def release_slot(self, lead_id: int, slot: str) -> None:
        await self.redis.delete(dedupe_key(lead_id, slot))

    async def create(self, request_id: str, record: dict[str, Any], due_ms: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(request_key(request_id), mapping=cast(Any, record))
            pipe.expire(request_key(request_id), REQUEST_TTL_SECONDS)
            pipe.zadd(OUTBOX_DUE, {request_id: due_ms})
            await pipe.execute()

    async def get(self, request_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(request_key(request_id)))

    async def update(self, request_id: str, **fields: str | int | float) -> None:
        await self.redis.hset(
            request_key(request_id), mapping=cast(Any, {**fields, "updated_at": time.time()})
        )

    async def delivered(self, request_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(OUTBOX_DUE, request_id)
            await pipe.execute()
