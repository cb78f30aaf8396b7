"""Every Redis key of the vendedor service."""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from services.vendedor.domain import Vendedor

# vendedor id → JSON. No expiry: a vendedor's history outlives its Kommo account.
VENDEDORES = "vd:vendedores"
# Unix seconds of the last successful sync with Kommo.
SYNCED_AT = "vd:synced-at"
# Why the last sync failed; cleared by a successful one.
SYNC_ERROR = "vd:sync-error"
# One replica syncs at a time; expires in case it dies.
SYNC_LOCK = "vd:sync-lock"
SYNC_LOCK_SECONDS = 120
# Ids of custom vendedores: far above Kommo's user ids (8 digits today), never reused.
CUSTOM_IDS = "vd:custom-ids"
CUSTOM_ID_BASE = 9_000_000_000
# Turn of the round-robin fallback, shared by every replica.
ROUND_ROBIN = "vd:round-robin"


class VendedorStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def all(self) -> dict[int, Vendedor]:
        raw = await self.redis.hgetall(VENDEDORES)
        return {int(k): Vendedor(**json.loads(v)) for k, v in raw.items()}

    async def get(self, vendedor_id: int) -> Vendedor | None:
        raw = await self.redis.hget(VENDEDORES, str(vendedor_id))
        return Vendedor(**json.loads(raw)) if raw else None

    async def put(self, *vendedores: Vendedor) -> None:
        if vendedores:
            await self.redis.hset(
                VENDEDORES, mapping={str(v.id): json.dumps(v.to_dict()) for v in vendedores}
            )

    async def synced(self, vendedores: dict[int, Vendedor]) -> float:
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            if vendedores:
                pipe.hset(
                    VENDEDORES,
                    mapping={str(k): json.dumps(v.to_dict()) for k, v in vendedores.items()},
                )
            pipe.set(SYNCED_AT, now)
            pipe.delete(SYNC_ERROR)
            await pipe.execute()
        return now

    async def sync_failed(self, reason: str) -> None:
        await self.redis.set(SYNC_ERROR, reason[:500])

    async def sync_state(self) -> tuple[float, str]:
        synced_at, error = await self.redis.mget(SYNCED_AT, SYNC_ERROR)
        text = error.decode() if isinstance(error, bytes) else (error or "")
        return float(synced_at or 0), text

    async def next_custom_id(self) -> int:
        return CUSTOM_ID_BASE + int(await self.redis.incr(CUSTOM_IDS))

    async def next_turn(self) -> int:
        return int(await self.redis.incr(ROUND_ROBIN))
