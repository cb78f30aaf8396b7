"""The event partitions' owner leases, and the heartbeats of the live replicas."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.common.due_queue import now_ms, text
from services.conversation.store.keys import EVENT_REPLICAS, event_owner_key
from services.conversation.store.scripts import register


class EventLeases:
    """Owner leases of the event streams, and the heartbeats of the live replicas."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._keep = register(redis, "keep_lease")

    async def beat(self, replica: str, lease_ms: int) -> int:
        """This replica is alive; how many are (seen within a lease)."""
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(EVENT_REPLICAS, {replica: now})
            pipe.zremrangebyscore(EVENT_REPLICAS, "-inf", now - lease_ms)
            pipe.zcard(EVENT_REPLICAS)
            result = await pipe.execute()
        return max(int(result[-1]), 1)

    async def leave(self, replica: str) -> None:
        await self.redis.zrem(EVENT_REPLICAS, replica)

    async def take(self, stream: str, replica: str, lease_ms: int) -> bool:
        return bool(await self.redis.set(event_owner_key(stream), replica, nx=True, px=lease_ms))

    async def renew(self, stream: str, replica: str, lease_ms: int) -> bool:
        return bool(await self._keep(keys=[event_owner_key(stream)], args=[replica, lease_ms]))

    async def release(self, stream: str, replica: str) -> bool:
        return bool(await self._keep(keys=[event_owner_key(stream)], args=[replica, ""]))

    async def owner(self, stream: str) -> str:
        return text(await self.redis.get(event_owner_key(stream)) or b"")
