"""Reports by day (issue 23): the machinery every service that reports uses — which day a
count goes to in BRIDGE_TIMEZONE, the fields a day's hash holds, what a request may ask,
the periods a report reads and how their counts become figures. What each service counts
and shows is its own (`Metrics`: services/conversation/reports.py,
services/scheduling/reports.py).

A day's hash holds one field per counter and owner, written by the service's Redis
scripts in the same call as the change they count:

    <counter>|<vendedor>|<pipeline>|<stage>|<origin>|<trigger>    ('-' = not known)

Counts only, no personal data: a day's hash outlives DATA_RETENTION_DAYS and an erasure,
and expires `KEPT_DAYS` after its day.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.common.errors import InvalidInput

# 13 months and a margin: a day's counts are there for a year and a month after it.
KEPT_DAYS = 400
REPORT_SECONDS = KEPT_DAYS * 86400
# The longest range one report reads.
MAX_MONTHS = 13
DEFAULT_DAYS = 30
UNKNOWN = "-"
_SETTLING_MINUTES = 10

GROUPS = ("day", "week", "month", "vendedor", "pipeline", "stage", "origin", "trigger")
DIMENSIONS = ("vendedor", "pipeline", "stage", "origin", "trigger")


def day_key(prefix: str, day: date) -> str:
    """The hash of `day`'s counts of a service whose report keys start with `prefix`."""
    return f"{prefix}{day.isoformat()}"


class ReportDays:
    """Which day it is in BRIDGE_TIMEZONE: the report hash a count goes into."""

    def __init__(self, prefix: str, timezone: str = "UTC") -> None:
        self.prefix = prefix
        self.timezone = timezone
        self._zone = ZoneInfo(timezone)

    def today(self, now: float | None = None) -> date:
        moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
        return moment.astimezone(self._zone).date()

    def key(self, now: float | None = None) -> str:
        return day_key(self.prefix, self.today(now))

    def settled(self, now: float | None = None) -> date:
        """The last day whose counts are final: yesterday, once a few minutes of today
        have passed (a count begun just before midnight may land just after it)."""
        moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
        local = moment.astimezone(self._zone)
        back = 1 if local.hour or local.minute >= _SETTLING_MINUTES else 2
        return local.date() - timedelta(days=back)


@dataclass(frozen=True, slots=True)
class Query:
    """A report asked for: its days (both included), grouping and filters."""

    first: date
    last: date
    group_by: str = "day"
    filters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        today: date,
        from_day: str,
        to_day: str,
        group_by: str,
        filters: Mapping[str, str],
    ) -> Query:
        """The query of a request, or InvalidInput saying what is wrong with it."""
        last = _day("to", to_day) if to_day else today
        first = _day("from", from_day) if from_day else _days_before(last, DEFAULT_DAYS - 1)
        if first > last:
            raise InvalidInput("from is after to")
        limit = add_months(first, MAX_MONTHS)
        if limit is not None and limit <= last:
            raise InvalidInput(f"a report spans at most {MAX_MONTHS} months")
        if first < _days_before(today, KEPT_DAYS):
            raise InvalidInput(f"reports are kept {MAX_MONTHS} months: from is older")
        group = group_by or "day"
        if group not in GROUPS:
            raise InvalidInput(f"group_by must be one of {', '.join(GROUPS)}")
        unknown = set(filters) - set(DIMENSIONS)
        if unknown:
            raise InvalidInput(f"filters are {', '.join(DIMENSIONS)}")
        wanted = {k: v.strip() for k, v in filters.items() if v and v.strip()}
        return cls(first, last, group, wanted)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def _day(name: str, value: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a date, YYYY-MM-DD") from None


def _days_before(day: date, days: int) -> date:
    return day - timedelta(days=days) if day.toordinal() > days else date.min


def add_months(day: date, months: int) -> date | None:
    """The same day `months` later (or that month's last); None past the calendar."""
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    if year > date.max.year:
        return None
    # The same day of that month, or its last when it has fewer.
    for last_day in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last_day))
        except ValueError:
            continue
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a day's hash: a counter and the dimensions it was counted under."""

    counter: str
    dimensions: Mapping[str, str]

    @classmethod
    def parse(cls, raw: str) -> Field | None:
        counter, sep, rest = raw.partition("|")
        parts = rest.split("|", 2)
        if not sep or len(parts) < 3:
            return None
        vendedor, pipeline, tail = parts
        stage, _, tail = tail.partition("|")
        # The origin and the trigger come from outside: a '|' in the origin stays in it.
        origin, _, trigger = tail.rpartition("|")
        vendedor, pipeline, stage = _known(vendedor), _known(pipeline), _known(stage)
        return cls(
            counter,
            {
                "vendedor": vendedor,
                "pipeline": pipeline,
                # A stage is its pipeline's: "<pipeline>:<status>".
                "stage": f"{pipeline}:{stage}" if stage != UNKNOWN else UNKNOWN,
                "origin": origin or UNKNOWN,
                "trigger": trigger or UNKNOWN,
            },
        )


def _known(kommo_id: str) -> str:
    """A Kommo id as a report shows it: '-' for none (Kommo's 0 included)."""
    return kommo_id if kommo_id not in ("", "0") else UNKNOWN


@dataclass(frozen=True, slots=True)
class Row:
    group: str
    values: dict[str, float]


# A period's counters summed by what the query groups by: the dimension's value, the day
# (YYYY-MM-DD) for a query grouped by time, or "total" -> counter -> count.
Sums = dict[str, dict[str, int]]


def dimension_of(group_by: str) -> str:
    """What a period's counts are summed by for a query grouped by `group_by`: the
    dimension; the day for a day or week (a period spans days of one month); the
    whole period for a month."""
    if group_by in DIMENSIONS:
        return group_by
    return "total" if group_by == "month" else "day"


def summed(
    day: date,
    counts: Mapping[str, int] | Mapping[bytes, bytes],
    dimension: str,
    filters: Mapping[str, str],
    where: dict[Any, tuple[str, str] | None] | None = None,
) -> Sums:
    """A day's hash (counter fields -> counts, as text or as Redis gives them) summed by
    `dimension`, only what matches `filters`. A day has thousands of fields, the same
    ones day after day: `where` (one per query, shared by its days) remembers where each
    goes, or that it goes nowhere, so each is judged once."""
    sums: Sums = {}
    if where is None:
        where = {}
    label = day.isoformat()
    for raw, n in counts.items():
        target = where.get(raw, _UNSEEN)
        if target is _UNSEEN:
            target = where[raw] = _target(raw, dimension, filters)
        if target is None:
            continue
        group, counter = target
        if group == "day":
            group = label
        counters = sums.get(group)
        if counters is None:
            counters = sums[group] = {}
        counters[counter] = counters.get(counter, 0) + int(n)
    return sums


_UNSEEN: Any = object()


def _target(raw: str | bytes, dimension: str, filters: Mapping[str, str]) -> tuple[str, str] | None:
    """Where a field's count goes: (its group, its counter), or None."""
    parsed = Field.parse(raw.decode() if isinstance(raw, bytes) else raw)
    if parsed is None or not _matches(parsed, filters):
        return None
    group = parsed.dimensions[dimension] if dimension in DIMENSIONS else dimension
    return group, parsed.counter


def add(into: Sums, more: Sums) -> Sums:
    """`more` added into `into`; a group new to `into` is taken as it is, not copied
    (sums are read or made for one report, and added once)."""
    for group, counters in more.items():
        mine = into.get(group)
        if mine is None:
            into[group] = counters
            continue
        get = mine.get
        for counter, n in counters.items():
            mine[counter] = get(counter, 0) + n
    return into


@dataclass(frozen=True, slots=True)
class Period:
    """Days of one month a report reads as one (`first` to `last`, both included);
    `settled` when their counts are final, so their sums can be kept and read again."""

    first: date
    last: date
    settled: bool

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def _month_end(day: date) -> date:
    following = add_months(day.replace(day=1), 1)
    return following - timedelta(days=1) if following else date.max


def periods(query: Query, settled: date) -> list[Period]:
    """The periods a report reads: for each month of its range, the days of it that are
    settled as one period, and each day after them (today) as one of its own."""
    out: list[Period] = []
    day = query.first
    while day <= query.last:
        end = min(_month_end(day), query.last)
        if day <= settled:
            out.append(Period(day, min(end, settled), True))
            if end <= settled:
                day = end + timedelta(days=1)
                continue
            day = settled + timedelta(days=1)
        while day <= end:
            out.append(Period(day, day, False))
            day += timedelta(days=1)
    return out


@dataclass(frozen=True, slots=True)
class Metrics:
    """What a service's report shows: each figure, in order, as the counters it sums;
    percentiles read from bins (figure -> (the bins' prefix, the quantile)), each bin's
    name after its prefix read by `bin_value` (None: not a bin); the figure a table by
    vendedor, pipeline... is sorted by, most first."""

    counts: Mapping[str, tuple[str, ...]]
    quantiles: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    bin_value: Callable[[str], float | None] = lambda _: None
    rank_by: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.counts, *self.quantiles)


@dataclass(frozen=True, slots=True)
class Report:
    query: Query
    rows: list[Row]
    total: Row

    @classmethod
    def of(
        cls, query: Query, days: Iterable[tuple[date, Mapping[str, int]]], metrics: Metrics
    ) -> Report:
        """The report of `query` from each day's hash (counter fields -> counts)."""
        dimension = dimension_of(query.group_by)
        return cls.of_sums(
            query,
            [(day, summed(day, counts, dimension, query.filters)) for day, counts in days],
            metrics,
        )

    @classmethod
    def of_sums(cls, query: Query, parts: Iterable[tuple[date, Sums]], metrics: Metrics) -> Report:
        """The report of `query` from its periods' sums (each with its first day)."""
        groups: Sums = {}
        for start, sums in parts:
            if query.group_by in DIMENSIONS:
                add(groups, sums)
                continue
            for value, counters in sums.items():
                day = start if value == "total" else date.fromisoformat(value)
                add(groups, {_when(query.group_by, day): counters})
        total: Sums = {}
        for counters in groups.values():
            add(total, {"total": dict(counters)})
        rows = [Row(group, figures(counts, metrics)) for group, counts in groups.items()]
        if query.group_by in ("day", "week", "month") or not metrics.rank_by:
            rows.sort(key=lambda r: r.group)
        else:
            rows.sort(key=lambda r: (-r.values[metrics.rank_by], r.group))
        return cls(query, rows, Row("total", figures(total.get("total", {}), metrics)))


def _matches(parsed: Field, filters: Mapping[str, str]) -> bool:
    return all(parsed.dimensions[name] == value for name, value in filters.items())


def _when(group_by: str, day: date) -> str:
    if group_by == "day":
        return day.isoformat()
    if group_by == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    return day.isoformat()[:7]


def figures(counts: Mapping[str, int], metrics: Metrics) -> dict[str, float]:
    """Every figure of `metrics` from a group's summed counters."""
    values: dict[str, float] = {
        name: float(sum(counts.get(c, 0) for c in counters))
        for name, counters in metrics.counts.items()
    }
    # Each prefix's bins read once and sorted once; a percentile is the nearest rank's
    # bin, read at its middle (services/conversation/series.py).
    bins: dict[str, list[tuple[float, int]]] = {p: [] for p, _ in metrics.quantiles.values()}
    for name, n in counts.items():
        for prefix, found in bins.items():
            if n > 0 and name.startswith(prefix):
                value = metrics.bin_value(name[len(prefix) :])
                if value is not None:
                    found.append((value, n))
    for found in bins.values():
        found.sort()
    for figure, (prefix, q) in metrics.quantiles.items():
        value = _quantile(bins[prefix], q)
        values[figure] = round(value, 3) if math.isfinite(value) else 0.0
    return values


def _quantile(ordered: list[tuple[float, int]], q: float) -> float:
    """The nearest rank's value of sorted (value, count) bins; 0 for none."""
    total = sum(n for _, n in ordered)
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= rank:
            return value
    return ordered[-1][0]
