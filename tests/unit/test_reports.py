"""The reports' pure logic (services/common/reports.py, services/conversation/reports.py): which day a count goes to
in BRIDGE_TIMEZONE, what a request may ask, and how a day's counters become figures."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.common.errors import InvalidInput
from services.common.reports import Field, Query, Report, ReportDays, periods
from services.conversation import reports, series

TODAY = date(2026, 12, 6)


def test_a_count_goes_to_the_day_of_bridge_timezone_not_utcs() -> None:
    # 02:30 UTC on the 7th is still the 6th in São Paulo (UTC-3), the 7th in UTC.
    moment = datetime(2026, 12, 7, 2, 30, tzinfo=UTC).timestamp()
    assert reports.report_days("America/Sao_Paulo").key(moment) == "conv:report:2026-12-06"
    assert reports.report_days("UTC").key(moment) == "conv:report:2026-12-07"
    assert ReportDays("x:", "Asia/Tokyo").today(moment) == date(2026, 12, 7)


def test_a_query_defaults_to_the_last_30_days_and_refuses_what_it_cannot_answer() -> None:
    query = Query.parse(TODAY, "", "", "", {})
    assert (query.first, query.last, query.group_by) == (date(2026, 11, 7), TODAY, "day")
    assert len(query.days()) == 30
    longest = Query.parse(TODAY, "2025-11-07", "2026-12-06", "month", {})
    assert len(longest.days()) == 395
    refused = {
        ("2026-02-30", "", "day"): "from must be a date",
        ("2026-12-06", "2026-12-01", "day"): "from is after to",
        ("2025-11-06", "2026-12-06", "day"): "at most 13 months",
        ("2024-01-01", "2024-01-31", "day"): "kept 13 months",
        ("", "", "year"): "group_by must be one of",
        ("", "0001-01-05", "day"): "kept 13 months",
        ("9999-12-01", "9999-12-31", "day"): "",
    }
    for (first, last, group), message in refused.items():
        if not message:
            Query.parse(TODAY, first, last, group, {})  # far future: empty, not an error
            continue
        with pytest.raises(InvalidInput, match=message):
            Query.parse(TODAY, first, last, group, {})
    with pytest.raises(InvalidInput, match="filters are"):
        Query.parse(TODAY, "", "", "day", {"lead": "1"})
    assert Query.parse(TODAY, "", "", "day", {"vendedor": " 7 ", "stage": ""}).filters == {
        "vendedor": "7"
    }


def test_a_field_names_its_counter_and_the_conversation_it_was_counted_for() -> None:
    parsed = Field.parse("messages_customer|10000002|8100001|71000001|waba|form")
    assert parsed is not None
    assert parsed.counter == "messages_customer"
    assert dict(parsed.dimensions) == {
        "vendedor": "10000002",
        "pipeline": "8100001",
        "stage": "8100001:71000001",
        "origin": "waba",
        "trigger": "form",
    }
    unknown = Field.parse("takeovers_api|0|-|-|-|-")
    assert unknown is not None and set(unknown.dimensions.values()) == {"-"}
    # An origin from outside with a '|' in it stays whole; a field of another shape is
    # not a count.
    odd = Field.parse("messages_customer|1|2|3|a|b|form")
    assert odd is not None and odd.dimensions["origin"] == "a|b"
    assert Field.parse("messages_customer") is None
    assert Field.parse("messages_customer|1|2") is None


def _day(**counts: int) -> dict[str, int]:
    return counts


def test_a_report_sums_counters_into_figures_by_group_and_filter() -> None:
    ana, bia = "10000002", "10000003"
    fast, slow = series.latency_field(1.0), series.latency_field(30.0)
    monday = {
        f"messages_customer|{ana}|81|71|waba|-": 3,
        f"messages_customer|{bia}|82|72|waba|form": 1,
        f"conversations_started|{bia}|82|72|waba|form": 1,
        f"resumes_command|{ana}|81|71|waba|-": 1,
        f"resumes_api|{ana}|81|71|waba|-": 1,
        f"replies|{ana}|81|71|waba|-": 2,
        f"{fast}|{ana}|81|71|waba|-": 1,
        f"{slow}|{ana}|81|71|waba|-": 1,
        "not a count": 5,
    }
    monday[f"{reports.n8n_answer_field(0.5)}|{ana}|81|71|waba|-"] = 2
    monday[f"{reports.n8n_answer_field(0.0)}|{bia}|82|72|waba|form"] = 1
    sunday = {f"messages_customer|{ana}|81|71|waba|-": 2}
    days = [(date(2026, 11, 30), monday), (date(2026, 12, 6), sunday)]

    def report(group_by: str, **filters: str) -> Report:
        query = Query.parse(TODAY, "2026-11-30", "2026-12-06", group_by, filters)
        return Report.of(query, days, reports.FIGURES)

    by_vendedor = report("vendedor")
    assert [r.group for r in by_vendedor.rows] == [ana, bia]  # most messages first
    first = by_vendedor.rows[0].values
    assert first["customer_messages"] == 5 and first["releases"] == 2
    assert first["replies"] == 2
    assert first["reply_p50_seconds"] == pytest.approx(1.0, rel=0.03)
    assert first["reply_p90_seconds"] == pytest.approx(30.0, rel=0.03)
    assert first["n8n_answer_p50_seconds"] == pytest.approx(0.5, rel=0.03)
    assert by_vendedor.rows[1].values["n8n_answer_p90_seconds"] == 0.0
    assert by_vendedor.total.values["customer_messages"] == 6
    assert set(by_vendedor.total.values) == set(reports.METRIC_NAMES)

    assert [r.group for r in report("week").rows] == ["2026-11-30"]  # both in one week
    assert [r.group for r in report("day").rows] == ["2026-11-30", "2026-12-06"]
    assert [r.group for r in report("month").rows] == ["2026-11", "2026-12"]
    assert [r.group for r in report("stage").rows] == ["81:71", "82:72"]
    assert [r.group for r in report("trigger").rows] == ["-", "form"]
    form = report("day", trigger="form")
    assert form.total.values["conversations_started"] == 1
    assert form.total.values["customer_messages"] == 1
    assert report("pipeline", vendedor=bia).rows[0].group == "82"
    assert report("day", vendedor="nobody").rows == []


def test_a_long_report_reads_each_months_settled_days_as_one_and_today_raw() -> None:
    query = Query.parse(TODAY, "2025-11-20", "2026-12-06", "vendedor", {})
    settled = date(2026, 12, 5)
    spans = [(p.first.isoformat(), p.last.isoformat(), p.settled) for p in periods(query, settled)]
    assert spans[0] == ("2025-11-20", "2025-11-30", True)
    assert spans[1] == ("2025-12-01", "2025-12-31", True)
    assert spans[-2:] == [("2026-12-01", "2026-12-05", True), ("2026-12-06", "2026-12-06", False)]
    assert len(spans) == 15
    assert sum(len(p.days()) for p in periods(query, settled)) == len(query.days())
    # Days after the settled ones (today, and any later) are each read as they are.
    ahead = periods(Query.parse(TODAY, "2026-12-01", "2026-12-08", "day", {}), settled)
    assert [(p.first.day, p.last.day, p.settled) for p in ahead] == [
        (1, 5, True),
        (6, 6, False),
        (7, 7, False),
        (8, 8, False),
    ]


def test_a_day_is_final_a_few_minutes_after_midnight_in_bridge_timezone() -> None:
    days = reports.report_days("America/Sao_Paulo")
    just_after = datetime(2026, 12, 7, 3, 5, tzinfo=UTC).timestamp()  # 00:05 in São Paulo
    later = datetime(2026, 12, 7, 3, 30, tzinfo=UTC).timestamp()  # 00:30
    assert days.settled(just_after) == date(2026, 12, 5)
    assert days.settled(later) == date(2026, 12, 6)
