"""Kommo requests leave evenly spaced, `(1 s + margin) / limit` apart, not as a burst at
the start of each window: a count per window (tests/integration/test_rate_limit.py) is
kept by both, only the spacing tells them apart.

Measured on the limiter's own record of departures (Redis' clock, the moment each was
allowed to go) and only from below: a departure can come late on a busy machine, never
early, so the assertions cannot flake on a slow run."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.kommo_gateway.ratelimit import RateLimiter
from services.kommo_gateway.store import RATE_DEPARTURES

LIMIT = 5
# Redis reports microseconds; the departure is confirmed at or after its reserved slot.
CLOCK_SLACK_US = 5_000


def _us(redis_time: tuple[int, int]) -> int:
    seconds, micros = redis_time
    return int(seconds) * 1_000_000 + int(micros)


async def test_departures_leave_evenly_spaced_not_in_a_burst(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, LIMIT)
    interval_us = round(limiter.interval_seconds * 1_000_000)
    assert 200_000 <= interval_us <= 210_000  # (1 s + 25 ms) / 5
    start_us = _us(await redis.time())
    # Ten callers at once, as a burst of gRPC calls would ask.
    await asyncio.gather(*(limiter.acquire() for _ in range(2 * LIMIT)))
    recorded = await redis.zrange(RATE_DEPARTURES, 0, -1, withscores=True)
    departures = sorted(int(row[1]) for row in recorded)
    # The window keeps the last second's departures: the first of the ten may be gone.
    assert len(departures) >= LIMIT
    offsets = [d - start_us for d in departures]
    n_before = 2 * LIMIT - len(departures)
    for i, offset in enumerate(offsets, start=n_before):
        assert offset >= i * interval_us - CLOCK_SLACK_US, (
            f"departure {i} left {offset / 1000:.0f} ms after the first call, before its "
            f"place at {i * interval_us / 1000:.0f} ms: {[o // 1000 for o in offsets]}"
        )
