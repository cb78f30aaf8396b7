"""What the scheduling service reports (issue 23): agendamentos requested, confirmed and
failed, per day in BRIDGE_TIMEZONE, kept 13 months, under the lead's vendedor (its
responsible user), pipeline and stage when it was requested (the machinery:
services/common/reports.py). Counted in the scripts that record the request and its
status (store.py), never twice: a status is counted when it changes."""

from __future__ import annotations

from services.common.reports import UNKNOWN, Metrics, ReportDays

DAY_PREFIX = "sched:report:"
REQUESTED, CONFIRMED, FAILED = (
    "agendamentos_requested",
    "agendamentos_confirmed",
    "agendamentos_failed",
)
FIGURES = Metrics(
    counts={name: (name,) for name in (REQUESTED, CONFIRMED, FAILED)},
    rank_by=REQUESTED,
)


def report_days(timezone: str) -> ReportDays:
    """The scheduling service's report days (its hashes: DAY_PREFIX + the day)."""
    return ReportDays(DAY_PREFIX, timezone)


def owner(vendedor: int, pipeline: int, stage: int) -> str:
    """Whose an agendamento is, as a report field names it after its counter: the
    vendedor, pipeline and stage ('-' when not known); no origin nor trigger."""
    return "|".join(str(x) if x else UNKNOWN for x in (vendedor, pipeline, stage)) + "|-|-"
