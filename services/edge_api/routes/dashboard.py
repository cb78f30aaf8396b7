"""The operator's pages: `GET /dashboard` and `GET /dashboard/reports`, HTML with no build
step.

The pages themselves hold no data and need no key. The dashboard asks `GET /dashboard/data`
(API key) every few seconds; each part of the data comes from its own service and fails on
its own: with the vendedor service down the page still shows conversations and Kommo. The
reports page asks `GET /reports` (API key) when it opens and when its controls change.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query
from fastapi.responses import Response

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.grpc_server import client_metadata
from services.edge_api.clients import Clients
from services.edge_api.deps import API_KEY, ClientsDep, RuntimeDep
from services.edge_api.routes.operations import series_json, stats_json
from services.edge_api.routes.status import health_report

DATA_TIMEOUT_SECONDS = 3.0
# Conversations listed under "Needs a look" (the most urgent first).
ATTENTION_LIMIT = 50

router = APIRouter(tags=["status"])

# The page's files, read once: they ship inside the package (no build step, no CDN).
_STATIC = resources.files("services.edge_api") / "static"
_FILES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "reports.html": "text/html; charset=utf-8",
    "reports.js": "text/javascript; charset=utf-8",
    "reports.css": "text/css; charset=utf-8",
}
_CONTENT = {name: (_STATIC / name).read_bytes() for name in _FILES}
# Nothing inline, nothing from elsewhere; the page cannot be framed.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    return Response(_CONTENT[name], media_type=_FILES[name], headers=_HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    """The page; open it as /dashboard#key=<EDGE_API_KEY> or type the key into it."""
    return _file("dashboard.html")


@router.get("/dashboard/dashboard.js", include_in_schema=False)
async def dashboard_js() -> Response:
    return _file("dashboard.js")


@router.get("/dashboard/dashboard.css", include_in_schema=False)
async def dashboard_css() -> Response:
    return _file("dashboard.css")


@router.get("/dashboard/reports", include_in_schema=False)
async def reports_page() -> Response:
    """Charts and tables of GET /reports; the key as the dashboard's (fragment or typed)."""
    return _file("reports.html")


@router.get("/dashboard/reports.js", include_in_schema=False)
async def reports_js() -> Response:
    return _file("reports.js")


@router.get("/dashboard/reports.css", include_in_schema=False)
async def reports_css() -> Response:
    return _file("reports.css")


def _unavailable(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return {"error": f"{exc.code().name}: {exc.details() or ''}".strip()}
    return {"error": type(exc).__name__}


async def _stats(clients: Clients, hours: int) -> dict[str, Any]:
    answer = await clients.conversation.GetStats(
        conv.GetStatsRequest(series_hours=hours),
        timeout=DATA_TIMEOUT_SECONDS,
        metadata=client_metadata(),
    )
    return {**stats_json(answer), **series_json(answer)}


async def _vendedores(clients: Clients) -> dict[str, Any]:
    answer = await clients.vendedor.ListVendedores(
        vd.ListVendedoresRequest(counts_only=True),
        timeout=DATA_TIMEOUT_SECONDS,
        metadata=client_metadata(),
    )
    synced_at = answer.synced_at
    return {
        "total": answer.total,
        "active": answer.active,
        "synced_at": synced_at or None,
        "age_seconds": round(time.time() - synced_at, 1) if synced_at else None,
        "sync_error": answer.sync_error or None,
    }


def _attention_json(a: conv.Attention) -> dict[str, Any]:
    c = a.conversation if a.HasField("conversation") else None
    return {
        "conversation_id": a.conversation_id,
        "lead_id": (c.lead_id or None) if c else None,
        "reason": a.reason,
        "detail": a.detail or None,
        "since": a.since or None,
        "bot_state": c.bot_state if c else None,
        "pending_messages": c.pending_messages if c else None,
    }


@router.get("/dashboard/data", dependencies=API_KEY)
async def dashboard_data(
    runtime: RuntimeDep,
    clients: ClientsDep,
    hours: Annotated[int, Query(ge=1, le=24)] = 6,
) -> dict[str, Any]:
    """Everything the dashboard shows, in one answer; a part that failed says why.
    `health` is what GET /health answers (the page's header shows it); `attention` the
    conversations an operator should look at, most urgent first."""
    stats, vendedores, report = await asyncio.gather(
        _stats(clients, hours),
        _vendedores(clients),
        health_report(runtime, ATTENTION_LIMIT),
        return_exceptions=True,
    )
    if isinstance(report, BaseException):
        raise report
    body = report.body
    work = report.work
    return {
        "generated_at": time.time(),
        "hours": hours,
        "health": {"status": body["status"], "problems": body["problems"], "work": body["work"]},
        "stats": _unavailable(stats) if isinstance(stats, BaseException) else stats,
        "vendedores": _unavailable(vendedores)
        if isinstance(vendedores, BaseException)
        else vendedores,
        "kommo": body["kommo"] if isinstance(body["kommo"], dict) else {"error": body["kommo"]},
        "services": body["services"],
        "attention": [_attention_json(a) for a in work.attention] if work else None,
    }
