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
from collections import Counter
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


# One period's counters summed by the query's dimension: its value ("total" when the
# query groups by time) -> counter -> count.
Sums = dict[str, Counter[str]]


def dimension_of(group_by: str) -> str:
    """What a period's counts are summed by for a query grouped by `group_by`."""
    return group_by if group_by in DIMENSIONS else "total"


def summed(
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
    for raw, n in counts.items():
        target = where.get(raw, _UNSEEN)
        if target is _UNSEEN:
            target = where[raw] = _target(raw, dimension, filters)
        if target is None:
            continue
        group, counter = target
        counters = sums.get(group)
        if counters is None:
            counters = sums[group] = Counter()
        counters[counter] += int(n)
    return sums


_UNSEEN: Any = object()


def _target(
    raw: str | bytes, dimension: str, filters: Mapping[str, str]
) -> tuple[str, str] | None:
    """Where a field's count goes: (its group, its counter), or None."""
    parsed = Field.parse(raw.decode() if isinstance(raw, bytes) else raw)
    if parsed is None or not _matches(parsed, filters):
        return None
    return ("total" if dimension == "total" else parsed.dimensions[dimension]), parsed.counter


def add(into: Sums, more: Sums) -> Sums:
    for group, counters in more.items():
        into.setdefault(group, Counter()).update(counters)
    return into


@dataclass(frozen=True, slots=True)
class Period:
    """A part of a report's range read as one: a day, or a whole month; `settled` when
    its counts are final (its sums can be kept and read again)."""

    kind: str  # "day" | "month"
    start: date
    settled: bool

    def days(self) -> list[date]:
        if self.kind == "day":
            return [self.start]
        return [self.start + timedelta(days=i) for i in range(_month_length(self.start))]


def _month_length(first: date) -> int:
    following = add_months(first, 1)
    return (following - first).days if following else 31


def periods(query: Query, settled: date) -> list[Period]:
    """The periods a report reads: every day when it is grouped by day or week; else
    each month wholly in the range and settled, and the days of the rest."""
    days = query.days()
    if query.group_by in ("day", "week"):
        return [Period("day", d, d <= settled) for d in days]
    out: list[Period] = []
    i = 0
    while i < len(days):
        day = days[i]
        first = day.replace(day=1)
        length = _month_length(first)
        last = first + timedelta(days=length - 1)
        if day == first and last <= query.last and last <= settled:
            out.append(Period("month", first, True))
            i += length
        else:
            out.append(Period("day", day, day <= settled))
            i += 1
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
            query, [(day, summed(counts, dimension, query.filters)) for day, counts in days]
        )

    @classmethod
    def of_sums(cls, query: Query, parts: Iterable[tuple[date, Sums]]) -> Report:
        """The report of `query` from its periods' sums (each with its first day)."""
        groups: dict[str, Counter[str]] = {}
        total: Counter[str] = Counter()
        for start, sums in parts:
            for value, counters in sums.items():
                group = value if query.group_by in DIMENSIONS else _when(query.group_by, start)
                groups.setdefault(group, Counter()).update(counters)
                total.update(counters)
        rows = [Row(group, figures(counts)) for group, counts in groups.items()]
        if query.group_by in ("day", "week", "month"):
            rows.sort(key=lambda r: r.group)
        else:
            rows.sort(key=lambda r: (-r.values["customer_messages"], r.group))
        return cls(query, rows, Row("total", figures(total)))


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
    for name, (prefix, q) in QUANTILES.items():
        # Read as the reply time's bins are (series.quantile), whatever their prefix.
        bins = {
            series.LATENCY_PREFIX + k.removeprefix(prefix): v
            for k, v in counts.items()
            if k.startswith(prefix)
        }
        value = series.quantile(bins, q) if bins else 0.0
        values[name] = round(value, 3) if math.isfinite(value) else 0.0
    return values
