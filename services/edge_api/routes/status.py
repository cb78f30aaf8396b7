"""Status: version, health, webhook status."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.grpc_server import client_metadata
from services.edge_api import webhook
from services.edge_api.cache import SharedResult
from services.edge_api.clients import SERVICE_NAMES, Clients
from services.edge_api.deps import (
    API_KEY,
    DEBUG,
    ClientsDep,
    OperatorKeyDep,
    RuntimeDep,
    require_metrics_key,
)
from services.edge_api.runtime import EdgeRuntime

VERSION = "0.1.0"
HEALTH_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["status"])


@router.get("/version")
async def version() -> dict[str, str]:
    return {"name": "kommo-n8n-bridge", "version": VERSION, "api": "v1"}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require_metrics_key)],
    responses={401: {"description": "EDGE_METRICS_REQUIRE_KEY is on and the key is missing"}},
)
async def metrics() -> PlainTextResponse:
    """Prometheus metrics of the edge: HTTP answers and latencies by route template and
    status (never an id, a phone or a secret). Public unless EDGE_METRICS_REQUIRE_KEY=true;
    then `X-API-Key`, or `Authorization: Bearer <key>` (Prometheus's `authorization`).
    Each gRPC service serves its own on METRICS_HOST:METRICS_PORT (METRICS_HOST follows
    GRPC_HOST)."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health(runtime: RuntimeDep, operator: OperatorKeyDep) -> JSONResponse:
    """Every service, Redis, Kommo and the work in the queues: 200 "ok" when all is well;
    503 "degraded" while a service or Redis is down, work keeps failing, or a dead letter
    younger than DEAD_LETTER_ALERT_SECONDS waits for a replay; `problems` says which.
    A Kommo token that needs attention is "degraded" with 200 (the bridge still runs).

    Without a key the answer is only `{"status": …}` (same HTTP status), and the checks
    behind it run at most once per EDGE_HEALTH_CACHE_SECONDS however often anyone asks.
    With the operator's key (EDGE_API_KEY): the details, checked now (joining a check
    under way, if any)."""
    shared = shared_health(runtime)
    if not operator:
        report = await shared.get()
        return JSONResponse({"status": report.body["status"]}, status_code=report.status_code)
    report = await shared.fresh()
    return JSONResponse(report.body, status_code=report.status_code)


def shared_health(runtime: EdgeRuntime) -> SharedResult[HealthReport]:
    if runtime.health is None:
        runtime.health = SharedResult(
            lambda: health_report(runtime), runtime.settings.edge_health_cache_seconds
        )
    return runtime.health


@dataclass(frozen=True)
class HealthReport:
    body: dict[str, Any]
    status_code: int
    work: conv.WorkStatus | None


async def health_report(runtime: EdgeRuntime, attention_limit: int = 0) -> HealthReport:
    """What /health answers; the dashboard's header shows the same."""
    clients = runtime.clients
    checks = await asyncio.gather(
        *(service_health(clients, name) for name in SERVICE_NAMES),
        redis_health(runtime.redis),
        kommo_status(clients),
        work_status(clients, attention_limit),
    )
    services = dict(zip(SERVICE_NAMES, checks[: len(SERVICE_NAMES)], strict=True))
    redis_state, kommo, work = checks[len(SERVICE_NAMES) :]
    problems = [
        f"service {name}: {state}" for name, state in services.items() if state != "SERVING"
    ]
    if redis_state not in ("ok", None):
        problems.append(f"redis: {redis_state}")
    if isinstance(work, conv.WorkStatus):
        work_json: dict[str, Any] | str = {
            "failing": work.failing,
            "dead_letters": work.dead_letters,
            "dead_letters_recent": work.dead_letters_recent,
            "recent_seconds": work.recent_seconds,
        }
        if work.failing:
            problems.append(f"{work.failing} work item(s) failing and retried")
        if work.dead_letters_recent:
            problems.append(
                f"{work.dead_letters_recent} dead letter(s) parked in the last "
                f"{work.recent_seconds / 3600:g} h (GET /dead-letters)"
            )
        problems.extend(work.template_problems)
    else:
        work_json = str(work)
        problems.append(f"work: {work}")
    healthy = not problems
    kommo_ok = isinstance(kommo, dict) and kommo["token_state"] in ("ok", "long_lived")
    kommo_ok = kommo_ok and isinstance(kommo, dict) and not kommo["blocked"]
    if not kommo_ok:
        state = kommo["token_state"] if isinstance(kommo, dict) else kommo
        problems.append(
            f"kommo: {'blocked' if isinstance(kommo, dict) and kommo['blocked'] else state}"
        )
    body = {
        "status": "ok" if not problems else "degraded",
        "version": VERSION,
        "services": services,
        "redis": redis_state,
        "kommo": kommo,
        "work": work_json,
        "problems": problems,
    }
    return HealthReport(
        body, 200 if healthy else 503, work if isinstance(work, conv.WorkStatus) else None
    )


async def work_status(clients: Clients, attention_limit: int = 0) -> conv.WorkStatus | str:
    """Failing work and dead letters, as the conversation service counts them."""
    try:
        return await clients.conversation.GetWorkStatus(
            conv.GetWorkStatusRequest(attention_limit=attention_limit),
            timeout=HEALTH_TIMEOUT_SECONDS,
            metadata=client_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        return f"unknown ({exc.code().name})"


# Kommo's settings the bridge subscribes to: chat messages, new leads and stage moves (the
# work), and every other change to a lead or a contact, which drops the copies the bridge
# keeps of it (services/conversation/context.py, the gateway's cache).
WEBHOOK_EVENTS = [
    "add_message",
    "add_lead",
    "status_lead",
    "update_lead",
    "responsible_lead",
    "delete_lead",
    "update_contact",
    "responsible_contact",
    "delete_contact",
]


@router.get("/webhooks/test", tags=["test & debug"], dependencies=[*API_KEY, *DEBUG])
async def webhooks_test(runtime: RuntimeDep, clients: ClientsDep) -> dict[str, Any]:
    """Is the webhook configured, which URL to register in Kommo, when the last arrived.
    A debug endpoint: 404 unless EDGE_DEBUG_ENDPOINTS=true (or the sandbox)."""
    status = await clients.conversation.GetWebhookStatus(
        conv.GetWebhookStatusRequest(), metadata=client_metadata()
    )
    last = status.last_received_at
    url = webhook_url(runtime)
    try:
        hooks = await clients.gateway.ListWebhooks(
            gw.ListWebhooksRequest(), timeout=HEALTH_TIMEOUT_SECONDS, metadata=client_metadata()
        )
        registered: Any = [
            {"events": list(h.events), "disabled": h.disabled}
            for h in hooks.webhooks
            if h.destination == url
        ]
    except grpc.aio.AioRpcError as exc:
        registered = f"unknown ({exc.code().name})"
    return {
        "configured": True,
        "register_in_kommo": url,
        "registered_in_kommo": registered,
        "events": WEBHOOK_EVENTS,
        "last_received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last))
        if last
        else None,
        "seconds_since_last": round(time.time() - last, 1) if last else None,
        "received_total": status.received_total,
    }


def webhook_url(runtime: RuntimeDep) -> str:
    settings = runtime.settings
    public = settings.edge_public_url.rstrip("/")
    return f"{public}{webhook.PATH}?secret={settings.kommo_webhook_secret}"


@router.post("/webhooks/register", tags=["test & debug"], dependencies=API_KEY)
async def register_webhook(runtime: RuntimeDep, clients: ClientsDep) -> dict[str, Any]:
    """Subscribe this bridge's webhook URL in Kommo (what `make kommo-webhook` calls)."""
    url = webhook_url(runtime)
    hooks = await clients.gateway.RegisterWebhook(
        gw.RegisterWebhookRequest(destination=url, events=WEBHOOK_EVENTS),
        metadata=client_metadata(),
    )
    mine = [h for h in hooks.webhooks if h.destination == url]
    return {
        "destination": url,
        "events": list(mine[0].events) if mine else [],
        "disabled": mine[0].disabled if mine else None,
    }


async def service_health(clients: Clients, name: str) -> str:
    try:
        answer = await clients.health(name).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES[name]),
            timeout=HEALTH_TIMEOUT_SECONDS,
        )
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def redis_health(redis: aioredis.Redis | None) -> str | None:
    if redis is None:
        return None
    try:
        await asyncio.wait_for(redis.ping(), HEALTH_TIMEOUT_SECONDS)
    except (RedisError, OSError, TimeoutError) as exc:
        return f"down ({type(exc).__name__})"
    return "ok"


def status_json(status: gw.GatewayStatus) -> dict[str, Any]:
    return {
        "mode": status.kommo_mode,
        "base_url": status.base_url,
        "token_state": status.token_state,
        "token_expires_at": status.token_expires_at or None,
        "token_refreshed_at": status.token_refreshed_at or None,
        "blocked": status.blocked,
        "breaker": status.breaker,
        "rate_limit_rps": status.rate_limit_rps,
        "detail": status.detail or None,
    }


async def kommo_status(clients: Clients) -> dict[str, Any] | str:
    try:
        status = await clients.gateway.GetStatus(
            gw.GetStatusRequest(), timeout=HEALTH_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as exc:
        return f"unknown ({exc.code().name})"
    return status_json(status)
