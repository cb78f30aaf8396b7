"""The report's day hashes (reports.py), read for a range of days in one round trip."""

from __future__ import annotations

from datetime import date

import redis.asyncio as aioredis

from services.common.due_queue import text
from services.conversation.reports import day_key


async def read_days(redis: aioredis.Redis, days: list[date]) -> list[tuple[date, dict[str, int]]]:
    """Each day's counters (field -> count); a day nothing was counted on is empty."""
    if not days:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(day_key(day))
        raws = await pipe.execute()
    return [
        (day, {text(k): int(v) for k, v in raw.items()})
        for day, raw in zip(days, raws, strict=True)
    ]
