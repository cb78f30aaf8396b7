"""The report's day hashes (reports.py), read for a range of days, and the sums of its
settled periods kept so that a long range is read quickly.

A report over 13 months would read every field of ~400 day hashes (one per counter and
conversation owner: thousands a busy day). A period whose counts are final (a day
before yesterday's end, a whole month before it: `ReportDays.settled`) is summed once
by what a query groups by and filters on, and the sums kept (`SUMS_KEPT_SECONDS`); a
report then reads the kept sums of its months and settled days, and only today's (and
any period not summed yet) raw. Sums hold counts only, as the day hashes do.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis

from services.common.due_queue import text
from services.conversation import reports
from services.conversation.reports import Period, Query, Report, Sums

SUMS_PREFIX = "conv:report:sums:"
# A sum is recomputed from its days at most this often (a filter asked once does not
# keep its sums for 13 months).
SUMS_KEPT_SECONDS = 14 * 86400


async def read_days(redis: aioredis.Redis, days: list[date]) -> list[tuple[date, dict[str, int]]]:
    """Each day's counters (field -> count); a day nothing was counted on is empty."""
    if not days:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(reports.day_key(day))
        raws = await pipe.execute()
    return [
        (day, {text(k): int(v) for k, v in raw.items()})
        for day, raw in zip(days, raws, strict=True)
    ]


async def _raw_days(redis: aioredis.Redis, days: list[date]) -> dict[date, dict[bytes, bytes]]:
    """Each day's hash as Redis gives it (decoding ~5,000 fields a busy day is left to
    the summing, which judges each field name once)."""
    if not days:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(reports.day_key(day))
        raws = await pipe.execute()
    return dict(zip(days, raws, strict=True))


def sums_key(period: Period, query: Query) -> str:
    """Where the sums of `period` for `query`'s grouping and filters are kept."""
    filters = urlencode(sorted(query.filters.items()))
    wanted = hashlib.sha256(filters.encode()).hexdigest()[:24] if filters else "-"
    dimension = reports.dimension_of(query.group_by)
    days = f"{period.first.isoformat()}:{period.last.isoformat()}"
    return f"{SUMS_PREFIX}{days}:{dimension}:{wanted}"


async def report(redis: aioredis.Redis, query: Query, settled: date) -> Report:
    """The report of `query`: kept sums where there are, the day hashes for the rest
    (two round trips, three when sums are made)."""
    periods = reports.periods(query, settled)
    dimension = reports.dimension_of(query.group_by)
    keyed = [p for p in periods if p.settled]
    kept: dict[Period, Sums] = {}
    if keyed:
        for period, raw in zip(
            keyed, await redis.mget([sums_key(p, query) for p in keyed]), strict=True
        ):
            if raw is not None:
                kept[period] = _loaded(raw)
    missing = [p for p in periods if p not in kept]
    needed = sorted({day for p in missing for day in p.days()})
    counts = await _raw_days(redis, needed)
    made: dict[Period, Sums] = {}
    where: dict[Any, tuple[str, str] | None] = {}
    for period in missing:
        sums: Sums = {}
        for day in period.days():
            reports.add(
                sums, reports.summed(day, counts.get(day, {}), dimension, query.filters, where)
            )
        made[period] = sums
    to_keep = {p: s for p, s in made.items() if p.settled}
    if to_keep:
        async with redis.pipeline(transaction=False) as pipe:
            for period, sums in to_keep.items():
                pipe.set(sums_key(period, query), json.dumps(sums), ex=SUMS_KEPT_SECONDS)
            await pipe.execute()
    every = {**kept, **made}
    return Report.of_sums(query, [(p.first, every[p]) for p in periods])


def _loaded(raw: bytes | str) -> Sums:
    sums: Sums = json.loads(raw)
    return sums
