"""Kommo's rate limit, shared by every gateway replica.

A sliding window log in Redis: a request may start only when fewer than `limit`
requests started in the last second, by Redis' clock, so the sum over all replicas
never exceeds the limit in any one-second window. Callers wait for their slot.
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from services.kommo_gateway.store import RATE_WINDOW

_WINDOW_MS = 1000
# Kommo counts arrivals, we count departures: two requests that leave 1,000 ms apart can
# arrive closer when the first is delayed on the way. 50 ms of margin absorbs that jitter
# at a cost of under 5 % of the budget (measured: 15 ms let a 429 through under load).
_MARGIN_MS = 50

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window * 2)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now + 1
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_second: int) -> None:
        self._redis = redis
        self._limit = per_second
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self) -> None:
        member = uuid.uuid4().hex
        while True:
            wait_ms = int(
                await self._acquire(
                    keys=[RATE_WINDOW], args=[self._limit, _WINDOW_MS + _MARGIN_MS, member]
                )
            )
            if wait_ms <= 0:
                return
            await asyncio.sleep(wait_ms / 1000)
