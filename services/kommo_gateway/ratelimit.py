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
import logging
import math
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.kommo_gateway.store import RATE_DEPARTURES, RATE_NEXT_SLOT

log = logging.getLogger(__name__)

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


# Right before sending: no more than `limit` departures in the last window. A process
# whose event loop woke late may reach this after its reserved time; without this check
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

# The request is being written now: it counts from now. Between confirmation and the
# write may lie a new connection (a TLS handshake to Kommo); counted from its
# confirmation, that request would arrive late and squeeze the next `limit` into one
# second. (A departure already gone from the window is not brought back.)
_WRITING = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return 1
"""

# httpcore's trace events for the moment a request starts to be written (HTTP/1.1, 2).
_SENDING = ("http11.send_request_headers.started", "http2.send_request_headers.started")


class Departure:
    """One request's place under the limit.

    Pass `trace` to httpx (`extensions={"trace": departure.trace}`): the departure is
    then counted from the moment the request is written. `settle()` once the call has
    ended frees the place of a request that never went out.
    """

    def __init__(self, limiter: RateLimiter, member: str) -> None:
        self._limiter = limiter
        self._member = member
        self._written = False
        self._settled = False

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if not self._written and event in _SENDING:
            self._written = True
            try:
                await self._limiter.writing(self._member)
            except RedisError as exc:
                # Counted from its confirmation instead: only the margin protects it.
                log.warning("rate limit: departure not moved to its write (%s)", exc)

    async def settle(self) -> None:
        """Free the place of a request that never went out; once."""
        if self._settled or self._written:
            return
        self._settled = True
        try:
            await self._limiter.release(self._member)
        except RedisError as exc:
            log.warning("rate limit: unused place not released (%s)", exc)


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_second: int) -> None:
        self._redis = redis
        self._limit = per_second
        self._window_us = (_WINDOW_MS + _MARGIN_MS) * 1000
        # Rounded up: `limit` reserved slots span a whole window, so a punctual request
        # always finds its place at the confirmation.
        self._interval_us = -(-self._window_us // per_second)
        self._reserve = redis.register_script(_RESERVE)
        self._confirm = redis.register_script(_CONFIRM)
        self._writing = redis.register_script(_WRITING)

    @property
    def interval_seconds(self) -> float:
        return self._interval_us / 1_000_000

    async def acquire(self) -> Departure:
        """Wait for this request's turn to go to Kommo."""
        wait_us = int(await self._reserve(keys=[RATE_NEXT_SLOT], args=[self._interval_us, 60_000]))
        if wait_us > 0:
            await _sleep_us(wait_us)
        member = uuid.uuid4().hex
        while True:
            wait_us = int(
                await self._confirm(
                    keys=[RATE_DEPARTURES], args=[self._limit, self._window_us, member]
                )
            )
            if wait_us <= 0:
                return Departure(self, member)
            await _sleep_us(wait_us)

    async def writing(self, member: str) -> None:
        await self._writing(keys=[RATE_DEPARTURES], args=[member])

    async def release(self, member: str) -> None:
        await self._redis.zrem(RATE_DEPARTURES, member)

    async def request(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        departure: Departure | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP call to Kommo within the limit, its departure recorded when written
        (a departure acquired earlier by the caller, or one acquired now)."""
        departure = departure or await self.acquire()
        try:
            return await http.request(method, url, extensions={"trace": departure.trace}, **kwargs)
        finally:
            await departure.settle()


async def _sleep_us(wait_us: int) -> None:
    """Sleep at least `wait_us`. uvloop's timers count whole milliseconds and may fire a
    sub-millisecond sleep at once; rounded up, a waiting request does not ask Redis
    again before its moment can have come."""
    await asyncio.sleep(math.ceil(wait_us / 1000) / 1000)
