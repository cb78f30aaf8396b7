"""A service's report days in Redis (services/common/reports.py), read for a range, and
the sums of its settled periods kept so that a long range is read quickly.

A report over 13 months would read every field of ~400 day hashes (one per counter and
owner: thousands a busy day). A period whose counts are final (a month's days up to
yesterday, once a few minutes of today have passed: `ReportDays.settled`) is summed once
by what a query groups by and filters on, and the sums kept (`SUMS_KEPT_SECONDS`); a
report then reads the kept sums of its periods and today's hash raw. Sums hold counts
only, as the day hashes do.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis

from bridge.reports.v1 import reports_pb2 as rpt
from services.common.due_queue import text
from services.common.reports import (
    DIMENSIONS,
    Metrics,
    Period,
    Query,
    Report,
    ReportDays,
    Sums,
    add,
    day_key,
    dimension_of,
    periods,
    summed,
)

# A sum is made again from its days at most this often (a filter asked once does not
# keep its sums for 13 months).
SUMS_KEPT_SECONDS = 14 * 86400


class ReportStore:
    """The report of one service: its days' hashes (`days.prefix` + the day) and the
    sums kept beside them (`days.prefix` + "sums:")."""

    def __init__(self, redis: aioredis.Redis, days: ReportDays, metrics: Metrics) -> None:
        self.redis = redis
        self.days = days
        self.metrics = metrics
        self.sums_prefix = f"{days.prefix}sums:"

    async def read_days(self, days: list[date]) -> list[tuple[date, dict[str, int]]]:
        """Each day's counters (field -> count); a day nothing was counted on is empty."""
        raws = await self._raw_days(days)
        return [(day, {text(k): int(v) for k, v in raws[day].items()}) for day in days]

    async def report(self, query: Query, settled: date | None = None) -> Report:
        """The report of `query`: kept sums where there are, the day hashes for the rest
        (two round trips, three when sums are made). `settled`: the last day whose counts
        are final (default: the clock's, `ReportDays.settled`)."""
        spans = periods(query, settled or self.days.settled())
        dimension = dimension_of(query.group_by)
        keyed = [p for p in spans if p.settled]
        kept: dict[Period, Sums] = {}
        if keyed:
            found = await self.redis.mget([self.sums_key(p, query) for p in keyed])
            for period, raw in zip(keyed, found, strict=True):
                if raw is not None:
                    kept[period] = json.loads(raw)
        missing = [p for p in spans if p not in kept]
        counts = await self._raw_days(sorted({day for p in missing for day in p.days()}))
        made: dict[Period, Sums] = {}
        where: dict[Any, tuple[str, str] | None] = {}
        for period in missing:
            sums: Sums = {}
            for day in period.days():
                add(sums, summed(day, counts.get(day, {}), dimension, query.filters, where))
            made[period] = sums
        to_keep = {p: s for p, s in made.items() if p.settled}
        if to_keep:
            async with self.redis.pipeline(transaction=False) as pipe:
                for period, sums in to_keep.items():
                    pipe.set(self.sums_key(period, query), json.dumps(sums), ex=SUMS_KEPT_SECONDS)
                await pipe.execute()
        every = {**kept, **made}
        return Report.of_sums(query, [(p.first, every[p]) for p in spans], self.metrics)

    async def answer(self, request: rpt.GetReportRequest) -> rpt.Report:
        """GetReport, as every reporting service answers it: the request judged
        (InvalidInput says what is wrong), the report made, as the proto carries it."""
        query = Query.parse(
            self.days.today(),
            request.from_day,
            request.to_day,
            request.group_by,
            {name: getattr(request, name) for name in DIMENSIONS},
        )
        report = await self.report(query)
        return rpt.Report(
            timezone=self.days.timezone,
            from_day=query.first.isoformat(),
            to_day=query.last.isoformat(),
            group_by=query.group_by,
            metrics=list(self.metrics.names),
            rows=[rpt.ReportRow(group=r.group, values=r.values) for r in report.rows],
            total=rpt.ReportRow(group="total", values=report.total.values),
        )

    def sums_key(self, period: Period, query: Query) -> str:
        """Where the sums of `period` for `query`'s grouping and filters are kept."""
        filters = urlencode(sorted(query.filters.items()))
        wanted = hashlib.sha256(filters.encode()).hexdigest()[:24] if filters else "-"
        days = f"{period.first.isoformat()}:{period.last.isoformat()}"
        return f"{self.sums_prefix}{days}:{dimension_of(query.group_by)}:{wanted}"

    async def _raw_days(self, days: list[date]) -> dict[date, dict[bytes, bytes]]:
        """Each day's hash as Redis gives it (decoding ~5,000 fields a busy day is left
        to the summing, which judges each field name once)."""
        if not days:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(day_key(self.days.prefix, day))
            raws = await pipe.execute()
        return dict(zip(days, raws, strict=True))
