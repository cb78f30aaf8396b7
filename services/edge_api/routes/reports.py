"""Performance reports (issue 23): what the bot and the team did, per day, week or month in
BRIDGE_TIMEZONE, or per vendedor, pipeline, stage, origin or proactive trigger; as JSON,
or as CSV for a spreadsheet.

The conversation service counts, fills in the defaults (the last 30 days) and judges the
range, the group and the filters (GetReport, INVALID_ARGUMENT → 400). The edge checks only
the shape of the query, so that a malformed value is a 400 naming the parameter (never a
422: these are query parameters a person types), and shapes the answer: counts as
integers, seconds to the millisecond."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Annotated, Any, cast

import grpc
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bridge.reports.v1 import reports_pb2 as rpt
from services.common.grpc_server import client_metadata
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.errors import ErrorBody, HttpError

router = APIRouter(tags=["reports"], dependencies=API_KEY)

# Each figure of a report, in the order the service sends them (Report.metrics), and what
# it counts. A name ending in `_seconds` is a time in seconds; every other is a count.
# A report whose months were never summed reads every field of their days once (a busy
# account: a few seconds for 13 months); after that, ~10 ms.
_REPORT_DEADLINE_SECONDS = 60.0
REQUESTED = "agendamentos_requested"

log = logging.getLogger(__name__)

METRICS: dict[str, str] = {
    "conversations_started": "conversations a customer started (counted at their first "
    "turn) or a proactive trigger opened",
    "customer_messages": "messages customers wrote",
    "bot_messages": "messages the bot delivered to customers",
    "template_sends": "WhatsApp templates the bridge sent (outside the 24-hour window)",
    "human_messages": "messages people of the team wrote in Kommo",
    "handoffs_ai": "conversations the AI handed to a person",
    "handoffs_silent": "turns n8n did not answer in time, handed to a person",
    "handoffs_keyword": "conversations handed to a person by a keyword rule",
    "takeovers_command": "conversations a vendedor took over with the takeover command",
    "takeovers_api": "conversations taken over through the API or dashboard",
    "takeovers_human": "conversations paused because a person replied in Kommo",
    "releases": "conversations given back to the bot by command or API",
    "auto_resumes": "conversations the bot took back after the quiet period",
    "ignored": "messages the bot rules ignored (contact or keyword)",
    "not_triggered": "messages no trigger rule started",
    "held_out_of_hours": "messages held because they came out of hours",
    "delivery_failures": "replies Kommo refused for good (not tried again)",
    "dead_letters": "n8n deliveries given up after every retry",
    "replies": "bot replies timed (customer message to reply delivered)",
    "reply_p50_seconds": "median seconds from a customer's message to the bot's reply",
    "reply_p90_seconds": "90th percentile of the same",
    "n8n_answer_p50_seconds": "median seconds n8n took to answer a turn's envelope",
    "n8n_answer_p90_seconds": "90th percentile of the same",
    # The scheduling service's (its own GetReport, put beside the conversation's).
    "agendamentos_requested": "agendamentos n8n asked for (POST /agendamento/request)",
    "agendamentos_confirmed": "agendamentos confirmed (their status set to confirmed)",
    "agendamentos_failed": "agendamentos that failed (n8n reported it, or never took them)",
}
SECONDS_SUFFIX = "_seconds"

GROUPS = ("day", "week", "month", "vendedor", "pipeline", "stage", "origin", "trigger")
FORMATS = ("json", "csv")
FILTERS = ("vendedor", "pipeline", "stage", "origin", "trigger")
MAX_FILTER_CHARS = 100
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
UNKNOWN = "-"
# What a spreadsheet would run as a formula at the start of a cell (CSV injection); such
# a cell gets a leading quote, which shows it as the text it is.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FILENAME_UNSAFE = re.compile(r"[^0-9A-Za-z_-]")

_METRICS_DESCRIBED = "; ".join(f"`{name}`: {meaning}" for name, meaning in METRICS.items())
_NUMBERS = (
    f"Counts are integers; the `{SECONDS_SUFFIX}` figures are seconds, to 3 decimals. "
    "A figure nothing counted is 0."
)


class ReportRow(BaseModel):
    """One group's figures: `group` and one number per name of `metrics`."""

    model_config = {
        "extra": "allow",
        "json_schema_extra": {
            "additionalProperties": {"type": "number"},
            "examples": [
                {"group": "2026-12-01", "customer_messages": 42, "reply_p50_seconds": 3.2}
            ],
        },
    }

    group: str = Field(
        description="the day (YYYY-MM-DD), the week's Monday, the month (YYYY-MM), or the "
        "value of the vendedor, pipeline, stage (`<pipeline id>:<status id>`), origin or "
        "trigger (`-` = not known); `total` in `total`"
    )


class Report(BaseModel):
    """A report: its days, its grouping, the names of its figures, a row per group."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "timezone": "America/Sao_Paulo",
                    "from": "2026-11-07",
                    "to": "2026-12-06",
                    "group_by": "vendedor",
                    "metrics": ["customer_messages", "bot_messages", "reply_p50_seconds"],
                    "rows": [
                        {
                            "group": "10000002",
                            "customer_messages": 42,
                            "bot_messages": 40,
                            "reply_p50_seconds": 3.25,
                        }
                    ],
                    "total": {
                        "group": "total",
                        "customer_messages": 42,
                        "bot_messages": 40,
                        "reply_p50_seconds": 3.25,
                    },
                    "incomplete": [],
                }
            ]
        }
    }

    timezone: str = Field(description="BRIDGE_TIMEZONE: the time zone of the days")
    from_day: str = Field(alias="from", description="the first day, YYYY-MM-DD (included)")
    to: str = Field(description="the last day, YYYY-MM-DD (included)")
    group_by: str = Field(description=f"one of {', '.join(GROUPS)}")
    metrics: list[str] = Field(description="the figures' names, in the order a table shows them")
    rows: list[ReportRow] = Field(
        description="one per group that saw anything: in time order, or the most customer "
        "messages first; each is `group` and one number per name of `metrics`. "
        f"{_NUMBERS} The figures: {_METRICS_DESCRIBED}."
    )
    total: ReportRow = Field(description='the whole range, `group` "total"')
    incomplete: list[str] = Field(
        default_factory=list,
        description="what the report lacks, and why (the agendamentos when the scheduling "
        "service did not answer; their figures are then left out); empty when whole",
    )


_FROM = "the first day, YYYY-MM-DD in BRIDGE_TIMEZONE (default: 29 days before `to`)"
_TO = "the last day, YYYY-MM-DD in BRIDGE_TIMEZONE, included (default: today)"
_FILTER = '(default: any; "-" = not known)'


@router.get(
    "/reports",
    response_model=Report,
    summary="Performance reports",
    responses={
        200: {
            "description": "the report; as CSV with `format=csv` (or `Accept: text/csv`): a "
            "header of the group's name and the metrics, a line per group, no total",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        400: {
            "model": ErrorBody,
            "description": "a malformed parameter (named), or a range, group or filter the "
            "service refuses: from after to, over 13 months long, older than 13 months",
        },
        # Never a 422: declared, so that FastAPI does not add one.
        "default": {"model": ErrorBody, "description": "any other error, in the same shape"},
    },
)
async def reports(
    request: Request,
    clients: ClientsDep,
    from_day: Annotated[
        str | None, Query(alias="from", description=_FROM, json_schema_extra={"format": "date"})
    ] = None,
    to_day: Annotated[
        str | None, Query(alias="to", description=_TO, json_schema_extra={"format": "date"})
    ] = None,
    group_by: Annotated[
        str, Query(description="what a row is", json_schema_extra={"enum": list(GROUPS)})
    ] = "day",
    vendedor: Annotated[
        str | None, Query(description=f"the vendedor's Kommo user id {_FILTER}")
    ] = None,
    pipeline: Annotated[str | None, Query(description=f"the pipeline's id {_FILTER}")] = None,
    stage: Annotated[
        str | None, Query(description=f'the stage, "<pipeline id>:<status id>" {_FILTER}')
    ] = None,
    origin: Annotated[
        str | None, Query(description=f"the chat's channel: waba, telegram… {_FILTER}")
    ] = None,
    trigger: Annotated[
        str | None, Query(description=f"the proactive trigger that started it {_FILTER}")
    ] = None,
    output: Annotated[
        str | None,
        Query(
            alias="format",
            description="json or csv (default: csv when `Accept` prefers text/csv, else json)",
            json_schema_extra={"enum": list(FORMATS)},
        ),
    ] = None,
) -> Response:
    """What the bot and the team did over a range of days (kept 13 months), grouped by
    time or by vendedor, pipeline, stage, origin or proactive trigger, and filtered by the
    same. An empty parameter is one not given."""
    filters = {
        "vendedor": vendedor,
        "pipeline": pipeline,
        "stage": stage,
        "origin": origin,
        "trigger": trigger,
    }
    query, as_csv = report_query(
        from_day, to_day, group_by, output, request.headers.get("accept"), filters
    )
    answer, incomplete = await _both(clients, query)
    if not as_csv:
        return JSONResponse({**report_json(answer), "incomplete": incomplete})
    headers = {"Content-Disposition": f'attachment; filename="{csv_filename(answer)}"'}
    if incomplete:
        headers["X-Report-Incomplete"] = "; ".join(incomplete)
    return Response(report_csv(answer), media_type=CSV_MEDIA_TYPE, headers=headers)


async def _both(clients: Any, query: rpt.GetReportRequest) -> tuple[rpt.Report, list[str]]:
    """The conversation service's report with the scheduling service's figures beside
    it, asked at once; and what it lacks. Without the scheduling service's answer (down,
    slow) the report is the conversation's, saying so."""
    metadata = client_metadata()
    ours = clients.conversation.GetReport(
        query, timeout=_REPORT_DEADLINE_SECONDS, metadata=metadata
    )
    theirs = clients.scheduling.GetReport(
        query,
        timeout=_REPORT_DEADLINE_SECONDS,
        metadata=metadata,
    )
    results: tuple[Any, Any] = await asyncio.gather(ours, theirs, return_exceptions=True)
    answer = cast(rpt.Report | BaseException, results[0])
    agendamentos = cast(rpt.Report | BaseException, results[1])
    if isinstance(answer, BaseException):
        raise answer
    if isinstance(agendamentos, grpc.aio.AioRpcError):
        code = agendamentos.code().name
        log.warning("report without agendamentos: the scheduling service answered %s", code)
        return answer, [f"agendamentos: the scheduling service did not answer ({code})"]
    if isinstance(agendamentos, BaseException):
        raise agendamentos
    return merged(answer, agendamentos), []


def merged(answer: rpt.Report, agendamentos: rpt.Report) -> rpt.Report:
    """Both services' figures in one report: a group's row with both, a group only one
    of them saw included; in time order, or the conversation service's order and then
    the rest by agendamentos requested, most first."""
    rows = {row.group: dict(row.values) for row in answer.rows}
    order = list(rows)
    extra = []
    for row in agendamentos.rows:
        if row.group not in rows:
            rows[row.group] = {}
            extra.append(row.group)
        rows[row.group].update(row.values)
    extra.sort(key=lambda group: (-rows[group].get(REQUESTED, 0.0), group))
    order += extra
    if answer.group_by in ("day", "week", "month"):
        order.sort()
    return rpt.Report(
        timezone=answer.timezone,
        from_day=answer.from_day,
        to_day=answer.to_day,
        group_by=answer.group_by,
        metrics=[*answer.metrics, *(m for m in agendamentos.metrics if m not in answer.metrics)],
        rows=[rpt.ReportRow(group=group, values=rows[group]) for group in order],
        total=rpt.ReportRow(
            group="total", values={**answer.total.values, **agendamentos.total.values}
        ),
    )


def report_query(
    from_day: str | None,
    to_day: str | None,
    group_by: str | None,
    output: str | None,
    accept: str | None,
    filters: Mapping[str, str | None],
) -> tuple[rpt.GetReportRequest, bool]:
    """The service's request and whether the answer is CSV; HttpError 400 naming every
    malformed parameter (never its value). Whether the range and the filters make sense
    is the service's to say."""
    problems = [*_day_problems("from", from_day), *_day_problems("to", to_day)]
    if group_by and group_by not in GROUPS:
        problems.append(f"query.group_by: one of {', '.join(GROUPS)}")
    if output and output not in FORMATS:
        problems.append(f"query.format: one of {', '.join(FORMATS)}")
    problems += [
        f"query.{name}: at most {MAX_FILTER_CHARS} characters"
        for name, value in filters.items()
        if value and len(value) > MAX_FILTER_CHARS
    ]
    if problems:
        raise HttpError(400, "invalid request: " + "; ".join(problems))
    request = rpt.GetReportRequest(
        from_day=from_day or "",
        to_day=to_day or "",
        group_by=group_by or "day",
        **{name: filters.get(name) or "" for name in FILTERS},
    )
    as_csv = output == "csv" if output else prefers_csv(accept or "")
    return request, as_csv


def _day_problems(name: str, value: str | None) -> list[str]:
    if not value:
        return []
    if _DAY.fullmatch(value):
        try:
            date.fromisoformat(value)
            return []
        except ValueError:
            pass
    return [f"query.{name}: a day as YYYY-MM-DD, e.g. 2026-12-06"]


def prefers_csv(accept: str) -> bool:
    """`Accept` names text/csv above application/json. Wildcards choose nothing: a
    browser's `*/*` still gets JSON, the default."""
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                weight = _weight(value.strip())
        media = media.lower()
        weights[media] = max(weight, weights.get(media, 0.0))
    return weights.get("text/csv", 0.0) > weights.get("application/json", 0.0)


def _weight(value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        return 0.0
    return weight if math.isfinite(weight) else 0.0


def report_metrics(answer: rpt.Report) -> list[str]:
    """The names, in the service's order (this edge's list for a service that sent none)."""
    return list(answer.metrics) or list(METRICS)


def metric_value(name: str, value: float) -> int | float:
    """A count as an integer, a `_seconds` figure to the millisecond. The proto carries
    doubles; one that is not a finite number (never sent) is 0."""
    if not math.isfinite(value):
        value = 0.0
    if name.endswith(SECONDS_SUFFIX):
        rounded = round(value, 3)
        return rounded if rounded else 0.0  # never -0.0
    return round(value)


def row_values(row: rpt.ReportRow, metrics: Sequence[str]) -> dict[str, int | float]:
    """Every metric of the report, in order; one the row does not carry is 0."""
    return {name: metric_value(name, row.values.get(name, 0.0)) for name in metrics}


def report_json(answer: rpt.Report) -> dict[str, Any]:
    metrics = report_metrics(answer)
    return {
        "timezone": answer.timezone,
        "from": answer.from_day,
        "to": answer.to_day,
        "group_by": answer.group_by,
        "metrics": metrics,
        "rows": [{"group": row.group, **row_values(row, metrics)} for row in answer.rows],
        "total": {"group": "total", **row_values(answer.total, metrics)},
    }


def report_csv(answer: rpt.Report) -> str:
    """A header (the group's name, then the metrics), a line per group, no total: a table
    a spreadsheet opens as it is."""
    metrics = report_metrics(answer)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([safe_cell(answer.group_by or "group"), *map(safe_cell, metrics)])
    for row in answer.rows:
        values = row_values(row, metrics).values()
        writer.writerow([safe_cell(row.group), *map(csv_number, values)])
    return text.getvalue()


def csv_number(value: int | float) -> str:
    """As a spreadsheet reads it whatever its locale's habits: a dot for decimals, no
    thousands separator, no exponent; seconds with up to 3 decimals."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def safe_cell(text: str) -> str:
    """A cell that cannot become a formula (CSV injection): one starting with =, +, -, @,
    a tab or a carriage return is prefixed with a quote; "-" alone (not known) stays."""
    if text != UNKNOWN and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def csv_filename(answer: rpt.Report) -> str:
    """reports-<from>-<to>-<group_by>.csv, of nothing but letters, digits, - and _."""
    parts = (answer.from_day, answer.to_day, answer.group_by)
    return "-".join(["reports", *(_FILENAME_UNSAFE.sub("", part) for part in parts)]) + ".csv"
