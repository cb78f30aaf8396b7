"""GET /reports at the edge (issue 23): the JSON and CSV shapes made from the service's
Report, the query checked into clear 400s (never 422), CSV chosen by `format` or `Accept`,
and the service's refusals passed on; the conversation service is a stand-in here."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import httpx
import pytest

from bridge.reports.v1 import reports_pb2 as rpt
from services.conversation import reports
from services.edge_api.app import create_api
from services.edge_api.clients import Clients
from services.edge_api.errors import HttpError
from services.edge_api.routes.reports import (
    METRICS,
    Report,
    csv_number,
    merged,
    metric_value,
    prefers_csv,
    report_csv,
    report_json,
    report_query,
    safe_cell,
)
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.settings import EdgeSettings
from services.scheduling import reports as scheduling_reports

KEY = "o" * 24
AUTH = {"X-API-Key": KEY}
NO_FILTERS: dict[str, str | None] = {}
SERVICE_REFUSAL = "from (2026-12-06) is after to (2026-12-01)"


def report(
    group_by: str = "vendedor",
    rows: dict[str, dict[str, float]] | None = None,
    metrics: tuple[str, ...] = ("customer_messages", "bot_messages", "reply_p50_seconds"),
) -> rpt.Report:
    given = rows if rows is not None else {"10000002": {"customer_messages": 3.0}}
    total: dict[str, float] = {}
    for values in given.values():
        for name, value in values.items():
            total[name] = total.get(name, 0.0) + value
    return rpt.Report(
        timezone="America/Sao_Paulo",
        from_day="2026-11-07",
        to_day="2026-12-06",
        group_by=group_by,
        metrics=metrics,
        rows=[rpt.ReportRow(group=group, values=values) for group, values in given.items()],
        total=rpt.ReportRow(group="total", values=total),
    )


# The figures


def test_counts_are_integers_and_seconds_are_rounded_to_the_millisecond() -> None:
    assert metric_value("customer_messages", 42.0) == 42
    assert isinstance(metric_value("customer_messages", 42.0), int)
    assert metric_value("reply_p50_seconds", 3.14159) == 3.142
    assert isinstance(metric_value("reply_p50_seconds", 3.0), float)
    assert math.copysign(1, metric_value("reply_p90_seconds", -0.0001)) == 1  # no -0.0
    assert metric_value("replies", math.nan) == 0
    assert metric_value("reply_p50_seconds", math.inf) == 0.0


def test_the_json_has_every_metric_in_order_a_missing_one_as_0_and_the_total() -> None:
    answer = report(
        rows={
            "10000002": {"customer_messages": 5.0, "bot_messages": 4.0, "reply_p50_seconds": 2.5},
            "-": {"customer_messages": 1.0},
        }
    )
    body = report_json(answer)
    assert body == {
        "timezone": "America/Sao_Paulo",
        "from": "2026-11-07",
        "to": "2026-12-06",
        "group_by": "vendedor",
        "metrics": ["customer_messages", "bot_messages", "reply_p50_seconds"],
        "rows": [
            {
                "group": "10000002",
                "customer_messages": 5,
                "bot_messages": 4,
                "reply_p50_seconds": 2.5,
            },
            {"group": "-", "customer_messages": 1, "bot_messages": 0, "reply_p50_seconds": 0.0},
        ],
        "total": {
            "group": "total",
            "customer_messages": 6,
            "bot_messages": 4,
            "reply_p50_seconds": 2.5,
        },
    }
    assert list(body["rows"][1]) == ["group", *body["metrics"]]
    # What the OpenAPI says is what is sent (the route adds what the report lacks).
    sent = {**body, "incomplete": []}
    assert Report.model_validate(sent).model_dump(by_alias=True) == sent


def test_without_names_from_the_service_the_edge_s_list_is_used() -> None:
    body = report_json(report(metrics=()))
    assert body["metrics"] == list(METRICS)
    assert body["total"]["reply_p90_seconds"] == 0.0
    assert body["total"]["conversations_started"] == 0


def test_the_documented_metrics_are_the_services_in_their_order() -> None:
    assert list(METRICS) == [*reports.METRIC_NAMES, *scheduling_reports.FIGURES.names]
    assert [name for name in METRICS if name.endswith("_seconds")] == [
        "reply_p50_seconds",
        "reply_p90_seconds",
        "n8n_answer_p50_seconds",
        "n8n_answer_p90_seconds",
    ]
    assert all(meaning for meaning in METRICS.values())


# CSV


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_the_csv_has_a_header_a_line_per_group_and_no_total() -> None:
    answer = report(
        group_by="day",
        rows={
            "2026-12-01": {"customer_messages": 1234567.0, "reply_p50_seconds": 2.0},
            "2026-12-02": {"bot_messages": 3.0, "reply_p50_seconds": 0.12345},
        },
    )
    assert csv_rows(report_csv(answer)) == [
        ["day", "customer_messages", "bot_messages", "reply_p50_seconds"],
        ["2026-12-01", "1234567", "0", "2"],
        ["2026-12-02", "0", "3", "0.123"],
    ]
    assert report_csv(answer).endswith("\r\n")


def test_csv_numbers_are_plain() -> None:
    assert csv_number(1234567) == "1234567"
    assert csv_number(0) == "0"
    assert csv_number(2.5) == "2.5"
    assert csv_number(0.001) == "0.001"
    assert csv_number(0.0) == "0"
    assert csv_number(1e16) == "10000000000000000"  # no exponent


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+5511999999999", "'+5511999999999"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("-", "-"),  # not known: stays as it is
        ("waba", "waba"),
        ("8100001:71000002", "8100001:71000002"),
        ("", ""),
    ],
)
def test_a_cell_never_becomes_a_formula(value: str, cell: str) -> None:
    assert safe_cell(value) == cell


def test_the_csv_guards_the_groups_and_quotes_what_needs_it() -> None:
    answer = report(
        group_by="origin",
        rows={"=cmd|' /C calc'!A0": {"customer_messages": 1.0}, "-": {}, "a,b": {}},
    )
    groups = [row[0] for row in csv_rows(report_csv(answer))[1:]]
    assert groups == ["'=cmd|' /C calc'!A0", "-", "a,b"]


# The query


def test_a_well_formed_query_becomes_the_service_s_request() -> None:
    request, as_csv = report_query(
        "2026-11-01",
        "2026-11-30",
        "stage",
        None,
        None,
        {"vendedor": "10000002", "pipeline": "", "stage": "8100001:71000002", "origin": None},
    )
    assert request == rpt.GetReportRequest(
        from_day="2026-11-01",
        to_day="2026-11-30",
        group_by="stage",
        vendedor="10000002",
        stage="8100001:71000002",
    )
    assert not as_csv


def test_what_is_not_given_is_left_to_the_service_s_defaults() -> None:
    request, as_csv = report_query(None, "", "", "", None, NO_FILTERS)
    assert request == rpt.GetReportRequest(group_by="day")
    assert not as_csv


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/csv", True),
        ("text/csv; charset=utf-8", True),
        ("application/json;q=0.5, text/csv", True),
        ("TEXT/CSV", True),
        ("application/json, text/csv;q=0.9", False),
        ("text/csv, application/json", False),  # a tie: JSON, the default
        ("text/csv;q=0", False),
        ("text/csv;q=nan", False),
        ("text/csv;q=x", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accept_chooses_csv_only_when_it_prefers_it(accept: str, expected: bool) -> None:
    assert prefers_csv(accept) is expected


def test_format_wins_over_accept() -> None:
    assert report_query(None, None, "day", "json", "text/csv", NO_FILTERS)[1] is False
    assert report_query(None, None, "day", "csv", "application/json", NO_FILTERS)[1] is True
    assert report_query(None, None, "day", None, "text/csv", NO_FILTERS)[1] is True


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (("2026-13-01", None, "day", None), "query.from: a day as YYYY-MM-DD"),
        (("2026-02-30", None, "day", None), "query.from: a day as YYYY-MM-DD"),
        ((None, "2026-1-5", "day", None), "query.to: a day as YYYY-MM-DD"),
        ((None, "20261205", "day", None), "query.to: a day as YYYY-MM-DD"),
        ((None, "yesterday", "day", None), "query.to: a day as YYYY-MM-DD"),
        ((None, "٢٠٢٦-١٢-٠٥", "day", None), "query.to: a day as YYYY-MM-DD"),
        ((None, None, "year", None), "query.group_by: one of day, week, month, vendedor"),
        ((None, None, "day", "xlsx"), "query.format: one of json, csv"),
    ],
)
def test_a_malformed_parameter_is_a_400_naming_it(
    arguments: tuple[str | None, str | None, str, str | None], problem: str
) -> None:
    with pytest.raises(HttpError) as refused:
        report_query(*arguments, None, NO_FILTERS)
    assert refused.value.status == 400
    assert refused.value.message.startswith(f"invalid request: {problem}")


def test_every_problem_is_named_and_no_value_is_echoed() -> None:
    with pytest.raises(HttpError) as refused:
        report_query("bad-from", "bad-to", "bad-group", "bad-format", None, {"origin": "o" * 101})
    message = refused.value.message
    for name in ("query.from", "query.to", "query.group_by", "query.format", "query.origin"):
        assert name in message
    assert "bad-" not in message and "o" * 101 not in message


# The route


class Conversation:
    """The conversation service's GetReport: records the requests, answers `answer`."""

    def __init__(self, answer: rpt.Report | Exception) -> None:
        self.answer = answer
        self.requests: list[rpt.GetReportRequest] = []

    async def GetReport(self, request: rpt.GetReportRequest, **_: Any) -> rpt.Report:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Scheduling:
    """The scheduling service's GetReport: answers `answer` (or raises it)."""

    def __init__(self, answer: rpt.Report | Exception | None = None) -> None:
        # By default a report with no figures of its own: the conversation's stands.
        self.answer = answer if answer is not None else rpt.Report()

    async def GetReport(self, request: rpt.GetReportRequest, **_: Any) -> rpt.Report:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeClients:
    def __init__(self, conversation: Conversation, scheduling: Scheduling | None = None) -> None:
        self.conversation = conversation
        self.scheduling = scheduling or Scheduling()


@pytest.fixture
def service() -> Conversation:
    return Conversation(report(group_by="vendedor", rows={"=1+1": {"customer_messages": 2.0}}))


@pytest.fixture
async def edge(service: Conversation) -> AsyncIterator[httpx.AsyncClient]:
    settings = EdgeSettings(
        redis_url="",
        edge_api_key=KEY,
        kommo_webhook_secret="s" * 24,
        conversation_addr="127.0.0.1:1",
        kommo_gateway_addr="127.0.0.1:1",
        vendedor_addr="127.0.0.1:1",
        scheduling_addr="127.0.0.1:1",
        kommo_sandbox=False,
    )
    runtime = EdgeRuntime(settings)
    runtime._clients = cast(Clients, FakeClients(service))
    transport = httpx.ASGITransport(app=create_api(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client


async def test_the_report_is_json_by_default(
    edge: httpx.AsyncClient, service: Conversation
) -> None:
    answer = await edge.get(
        "/reports",
        params={"from": "2026-11-07", "to": "2026-12-06", "group_by": "vendedor", "origin": "waba"},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["rows"] == [
        {"group": "=1+1", "customer_messages": 2, "bot_messages": 0, "reply_p50_seconds": 0.0}
    ]
    assert service.requests == [
        rpt.GetReportRequest(
            from_day="2026-11-07", to_day="2026-12-06", group_by="vendedor", origin="waba"
        )
    ]


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"format": "csv"}, {}), ({}, {"Accept": "text/csv"})],
    ids=["format=csv", "Accept: text/csv"],
)
async def test_csv_by_format_or_by_accept(
    edge: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> None:
    answer = await edge.get("/reports", params=params, headers={**AUTH, **headers})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == (
        'attachment; filename="reports-2026-11-07-2026-12-06-vendedor.csv"'
    )
    assert csv_rows(answer.text) == [
        ["vendedor", "customer_messages", "bot_messages", "reply_p50_seconds"],
        ["'=1+1", "2", "0", "0"],
    ]


async def test_format_json_wins_over_accept(edge: httpx.AsyncClient) -> None:
    answer = await edge.get("/reports?format=json", headers={**AUTH, "Accept": "text/csv"})
    assert answer.status_code == 200
    assert answer.json()["group_by"] == "vendedor"


@pytest.mark.parametrize(
    "query",
    [
        "from=2026-02-30",
        "to=tomorrow",
        "group_by=year",
        "format=xlsx",
        f"vendedor={'1' * 101}",
        "from=x&to=y&group_by=z&format=w",
    ],
)
async def test_a_malformed_parameter_is_a_400_and_the_service_is_not_asked(
    edge: httpx.AsyncClient, service: Conversation, query: str
) -> None:
    answer = await edge.get(f"/reports?{query}", headers=AUTH)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["status"] == 400 and body["error"].startswith("invalid request: query.")
    assert service.requests == []


async def test_empty_parameters_are_parameters_not_given(
    edge: httpx.AsyncClient, service: Conversation
) -> None:
    answer = await edge.get("/reports?from=&to=&group_by=&format=&stage=", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert service.requests == [rpt.GetReportRequest(group_by="day")]


async def test_the_service_s_refusal_is_a_400_with_its_message(
    edge: httpx.AsyncClient, service: Conversation
) -> None:
    service.answer = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=SERVICE_REFUSAL,
        debug_error_string="",
    )
    answer = await edge.get("/reports?from=2026-12-06&to=2026-12-01", headers=AUTH)
    assert (answer.status_code, answer.json()) == (400, {"error": SERVICE_REFUSAL, "status": 400})


async def test_the_key_is_needed_before_anything_is_checked(
    edge: httpx.AsyncClient, service: Conversation
) -> None:
    assert (await edge.get("/reports?group_by=year")).status_code == 401
    assert service.requests == []


async def test_the_schema_documents_the_parameters_and_no_422(edge: httpx.AsyncClient) -> None:
    operation = (await edge.get("/openapi.json")).json()["paths"]["/reports"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"from", "to", "group_by", "format", "vendedor", "trigger"} <= names
    assert "422" not in operation["responses"]
    assert {"application/json", "text/csv"} <= set(operation["responses"]["200"]["content"])


SCHEDULING = ["agendamentos_requested", "agendamentos_confirmed", "agendamentos_failed"]


def test_the_agendamentos_join_each_groups_row_and_a_group_only_they_saw() -> None:
    ours = report(
        group_by="vendedor",
        rows={"7": {"customer_messages": 5.0}, "8": {"customer_messages": 1.0}},
    )
    theirs = rpt.Report(
        group_by="vendedor",
        metrics=SCHEDULING,
        rows=[
            rpt.ReportRow(group="8", values={"agendamentos_requested": 2.0}),
            rpt.ReportRow(group="9", values={"agendamentos_requested": 1.0}),
        ],
        total=rpt.ReportRow(group="total", values={"agendamentos_requested": 3.0}),
    )
    both = report_json(merged(ours, theirs))
    assert both["metrics"][-3:] == SCHEDULING
    assert [
        (r["group"], r["customer_messages"], r["agendamentos_requested"]) for r in both["rows"]
    ] == [
        ("7", 5, 0),
        ("8", 1, 2),
        ("9", 0, 1),
    ]
    assert both["total"]["agendamentos_requested"] == 3
    by_day = merged(
        report(group_by="day", rows={"2026-12-02": {"customer_messages": 1.0}}),
        rpt.Report(
            group_by="day",
            metrics=SCHEDULING,
            rows=[rpt.ReportRow(group="2026-12-01", values={"agendamentos_failed": 1.0})],
        ),
    )
    assert [r.group for r in by_day.rows] == ["2026-12-01", "2026-12-02"]  # time order


async def test_a_report_without_the_scheduling_service_says_what_it_lacks(
    service: Conversation,
) -> None:
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", None
    )
    settings = EdgeSettings(
        redis_url="",
        edge_api_key=KEY,
        kommo_webhook_secret="s" * 24,
        conversation_addr="127.0.0.1:1",
        kommo_gateway_addr="127.0.0.1:1",
        vendedor_addr="127.0.0.1:1",
        scheduling_addr="127.0.0.1:1",
        kommo_sandbox=False,
    )
    runtime = EdgeRuntime(settings)
    runtime._clients = cast(Clients, FakeClients(service, Scheduling(down)))
    transport = httpx.ASGITransport(app=create_api(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        answer = await client.get("/reports", headers=AUTH)
        assert answer.status_code == 200
        assert answer.json()["incomplete"] == [
            "agendamentos: the scheduling service did not answer (UNAVAILABLE)"
        ]
        assert "agendamentos_requested" not in answer.json()["metrics"]
        csv_answer = await client.get("/reports", params={"format": "csv"}, headers=AUTH)
        assert csv_answer.headers["x-report-incomplete"].startswith("agendamentos:")
