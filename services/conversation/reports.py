"""Performance reports (issue 23): what the bot and the team did, per day in
BRIDGE_TIMEZONE, kept 13 months, grouped by time or by vendedor, pipeline, stage, origin
or proactive trigger.

Counted as it happens. Every counter a store script adds for the dashboard (`bump` in
store/lua/_lib.lua, in the same script as the change it counts, so a retried or
replayed call never counts twice) also goes into the day's report hash (`report`), one
field per counter and conversation:

    <counter>|<vendedor>|<pipeline>|<stage>|<origin>|<trigger>    ('-' = not known)

The vendedor (the lead's responsible user), pipeline and stage are the lead's as the
conversation's last turn (or proactive start) read them; origin is the chat's channel;
trigger the proactive trigger that started the conversation. The hash holds counts only,
no personal data: it outlives DATA_RETENTION_DAYS and an erasure, and expires
`KEPT_DAYS` after its day. Reading is `Report.of`: the days of the range in one
pipeline, summed by group, each figure a sum of counters (`METRICS`), the reply time's
percentiles from the latency bins the dashboard's series uses (series.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.common.errors import InvalidInput
from services.conversation import series

DAY_PREFIX = "conv:report:"
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

# Each figure of a report, in the order a table shows it: the counters it sums.
METRICS: dict[str, tuple[str, ...]] = {
    "conversations_started": ("conversations_started",),
    "customer_messages": ("messages_customer",),
    "bot_messages": ("messages_out",),
    "template_sends": ("template_sends",),
    "human_messages": ("messages_human",),
    "handoffs_ai": ("handoffs_ai",),
    "handoffs_silent": ("handoffs_timeout",),
    "handoffs_keyword": ("handoffs_keyword",),
    "takeovers_command": ("takeovers_command",),
    "takeovers_api": ("takeovers_api",),
    "takeovers_human": ("takeovers_auto",),
    "releases": ("resumes_command", "resumes_api"),
    "auto_resumes": ("resumes_auto",),
    "ignored": ("decision_ignore",),
    "not_triggered": ("decision_not_triggered",),
    "held_out_of_hours": ("decision_hold",),
    "dead_letters": ("dead_lettered",),
    "replies": (series.REPLIES,),
}
# The reply time (a customer's message to the bot's reply delivered: the first response
# to it) and n8n's answer time (the turn's envelope ready for n8n to n8n's reply at the
# bridge), from their bins: the figure, the bins' prefix, the quantile.
N8N_PREFIX = "n8n:"
QUANTILES = {
    "reply_p50_seconds": (series.LATENCY_PREFIX, 0.5),
    "reply_p90_seconds": (series.LATENCY_PREFIX, 0.9),
    "n8n_answer_p50_seconds": (N8N_PREFIX, 0.5),
    "n8n_answer_p90_seconds": (N8N_PREFIX, 0.9),
}
METRIC_NAMES = (*METRICS, *QUANTILES)


def n8n_answer_field(seconds: float) -> str:
    """The bin of one n8n answer time (the reply time's bins, under their own prefix)."""
    return N8N_PREFIX + series.latency_field(max(seconds, 0.0)).removeprefix(series.LATENCY_PREFIX)


def day_key(day: date) -> str:
    return f"{DAY_PREFIX}{day.isoformat()}"


class ReportDays:
    """Which day it is in BRIDGE_TIMEZONE: the report hash a count goes into."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.timezone = timezone
        self._zone = ZoneInfo(timezone)

    def today(self, now: float | None = None) -> date:
        moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
        return moment.astimezone(self._zone).date()

    def key(self, now: float | None = None) -> str:
        return day_key(self.today(now))

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
class Report:
    query: Query
    rows: list[Row]
    total: Row

    @classmethod
    def of(cls, query: Query, days: Iterable[tuple[date, Mapping[str, int]]]) -> Report:
        """The report of `query` from each day's hash (counter fields -> counts)."""
        dimension = dimension_of(query.group_by)
        return cls.of_sums(
            query,
            [(day, summed(day, counts, dimension, query.filters)) for day, counts in days],
        )

    @classmethod
    def of_sums(cls, query: Query, parts: Iterable[tuple[date, Sums]]) -> Report:
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
        rows = [Row(group, figures(counts)) for group, counts in groups.items()]
        if query.group_by in ("day", "week", "month"):
            rows.sort(key=lambda r: r.group)
        else:
            rows.sort(key=lambda r: (-r.values["customer_messages"], r.group))
        return cls(query, rows, Row("total", figures(total.get("total", {}))))


def _matches(parsed: Field, filters: Mapping[str, str]) -> bool:
    return all(parsed.dimensions[name] == value for name, value in filters.items())


def _when(group_by: str, day: date) -> str:
    if group_by == "day":
        return day.isoformat()
    if group_by == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    return day.isoformat()[:7]


def figures(counts: Mapping[str, int]) -> dict[str, float]:
    """Every figure of METRIC_NAMES from a group's summed counters."""
    values: dict[str, float] = {
        name: float(sum(counts.get(c, 0) for c in counters)) for name, counters in METRICS.items()
    }
    # Each prefix's bins read once and sorted once, read as the reply time's are
    # (series.quantile: the nearest rank's bin, at its middle).
    bins: dict[str, list[tuple[float, int]]] = {prefix: [] for prefix, _ in QUANTILES.values()}
    for name, n in counts.items():
        for prefix, found in bins.items():
            if n > 0 and name.startswith(prefix):
                value = series.bin_value(series.LATENCY_PREFIX + name[len(prefix) :])
                if value is not None:
                    found.append((value, n))
    for found in bins.values():
        found.sort()
    for figure, (prefix, q) in QUANTILES.items():
        value = _quantile(bins[prefix], q)
        values[figure] = round(value, 3) if math.isfinite(value) else 0.0
    return values


def _quantile(ordered: list[tuple[float, int]], q: float) -> float:
    """As series.quantile, from bins already read and sorted."""
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
