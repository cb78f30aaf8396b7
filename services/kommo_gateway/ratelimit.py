"""Kommo's rate limit, shared by every gateway replica.

Each request reserves its own departure time in Redis (by Redis' clock) and sleeps
once until then: requests leave evenly spaced, `(1 s + margin) / limit` apart, from all
replicas together. Even spacing matters: Kommo counts arrivals in any one-second
window, and a burst that leaves in the same millisecond arrives spread by network and
server jitter, so the limit could only be kept with a large margin. Evenly spaced, the
margin only has to cover a few milliseconds of jitter (bench/README.md measured the
bursty sliding window at 94.8 % of the limit, with the odd 429; spacing does better).
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from services.kommo_gateway.store import RATE_DEPARTURES, RATE_NEXT_SLOT

_WINDOW_MS = 1000
# Kommo counts arrivals, we count departures: two requests that leave exactly a second
# apart can arrive closer. 25 ms absorbs that jitter for under 2.5 % of the budget.
_MARGIN_MS = 25

# The next free departure time, in microseconds; every caller reserves its own.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_slot = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_slot)
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[1])), 'PX', ARGV[2])
return slot - now
"""


# Right before sending: no more than `limit` actual departures in the last window. A
# process whose event loop was busy may wake after its reserved time; without this check
# its late request and a punctual one `limit` places later could land in one second.
_CONFIRM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now + 1
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_second: int) -> None:
        self._redis = redis
        self._limit = per_second
        self._window_us = (_WINDOW_MS + _MARGIN_MS) * 1000
        self._interval_us = self._window_us // per_second
        self._reserve = redis.register_script(_RESERVE)
        self._confirm = redis.register_script(_CONFIRM)

    @property
    def interval_seconds(self) -> float:
        return self._interval_us / 1_000_000

    async def acquire(self) -> None:
        """Wait for this request's turn to go to Kommo."""
        wait_us = int(await self._reserve(keys=[RATE_NEXT_SLOT], args=[self._interval_us, 60_000]))
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
        member = uuid.uuid4().hex
        while True:
            wait_us = int(
                await self._confirm(
                    keys=[RATE_DEPARTURES], args=[self._limit, self._window_us, member]
                )
            )
            if wait_us <= 0:
                return
            await asyncio.sleep(wait_us / 1_000_000)
