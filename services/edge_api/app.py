"""The edge's HTTP API: FastAPI for everything but the webhook hot path."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from services.common.logs import request_id
from services.common.metrics import HTTP_REQUESTS, HTTP_SECONDS
from services.edge_api import reply_fast_path, webhook
from services.edge_api.deps import N8N_OPERATIONS
from services.edge_api.errors import ERROR_HANDLERS, ErrorBody, error_body
from services.edge_api.routes import (
    bot,
    bot_rules,
    conversations,
    dashboard,
    kommo,
    operations,
    privacy,
    proactive,
    reports,
    scheduling,
    status,
    vendedores,
)
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.settings import EdgeSettings

log = logging.getLogger(__name__)

# Asked every few seconds by healthchecks, Prometheus and the dashboard: DEBUG, not INFO.
_POLLED_ROUTES = frozenset(
    {
        "/health",
        "/metrics",
        "/version",
        "/dashboard",
        "/dashboard/data",
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
    }
)

# Where /docs and /redoc load Swagger UI and ReDoc from: files shipped by the
# fastapi-offline package, so the pages work without Internet access.
DOCS_ASSETS_URL = "/docs/assets"

_DESCRIPTION = """Kommo CRM webhooks in, n8n replies out, salespeople in control.

**Errors** all have one shape, `{"error": "…", "status": N}`; a 422 adds `fields`, each
invalid field with what is wrong (the values sent are never echoed back). A 405 carries
`Allow`; a 429 carries `Retry-After`.

**What needs the key.** Every endpoint needs the `X-API-Key` header except: `GET /health`
(without the key it says only `{"status": "ok"|"degraded"}`; the details need it),
`GET /version`, the documentation (`/docs`, `/redoc`, `/openapi.json`), the dashboard's
pages (`/dashboard`, `/dashboard/reports`) and their scripts and styles (their figures,
`GET /dashboard/data` and `GET /reports`, need the key), `GET /metrics`
(public unless `EDGE_METRICS_REQUIRE_KEY=true`; it holds counts and latencies by route
template and status, never an id, a phone or a secret), `GET /oauth/callback` (checks its
own one-time `state`) and `POST /webhooks/kommo` (checks the `secret` in its URL).
`GET /oauth/authorize`, opened in a browser, also takes `?api_key=`.

**Two keys.** `EDGE_API_KEY` is the operator's: every endpoint. `EDGE_N8N_API_KEY`
(optional) is n8n's: only `POST /send-response` and `POST /agendamento/{id}/status`; any
other endpoint answers it 403. The debug endpoints (`GET /debug/conversations`,
`DELETE /reset/conversations`, `GET /webhooks/test`) answer 404 unless
`EDGE_DEBUG_ENDPOINTS=true` (on by default only against the Kommo sandbox).

**What listens where.** This API on `EDGE_HOST`:`EDGE_PORT` (default `0.0.0.0:8000`: the
only port meant to be reached from outside). The gRPC services on `GRPC_HOST`:`GRPC_PORT`,
and their Prometheus metrics on `METRICS_HOST`:`METRICS_PORT`, where `METRICS_HOST`
defaults to `GRPC_HOST` (`make run` binds both to 127.0.0.1).
"""


def create_app(settings: EdgeSettings) -> Any:
    """The ASGI app: the webhook fast path in front of the FastAPI application."""
    runtime = EdgeRuntime(settings)
    api = create_api(runtime)
    max_body = settings.edge_max_body_bytes
    too_large = f"body over {max_body} bytes"

    async def app(scope: webhook.Scope, receive: webhook.Receive, send: webhook.Send) -> None:
        if scope["type"] != "http":
            await api(scope, receive, send)
            return
        if scope["path"] == webhook.PATH and scope["method"] == "POST":
            # The hot path counts its own answers (webhook.py): no wrapper, no request id
            # (nothing on it logs per request).
            await runtime.webhook(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        # One id for the request, carried to every service it calls (gRPC metadata)
        # and into every log line on the way.
        rid = _incoming_request_id(scope) or uuid.uuid4().hex[:16]
        token = request_id.set(rid)

        async def send_and_note(message: webhook.Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The caller can quote it when asking about this request.
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        received = 0

        async def receive_bounded() -> webhook.Message:
            # A body sent without Content-Length (chunked) is bounded as it arrives;
            # FastAPI passes this on to the error handlers (errors.py), which answer 413.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_body:
                raise StarletteHTTPException(413, too_large)
            return message

        try:
            length = webhook.declared_length(scope)
            if length is not None and length > max_body:
                await webhook.respond(send_and_note, 413, error_body(413, too_large))
                return
            if scope["path"] == reply_fast_path.PATH and scope["method"] == "POST":
                # n8n's replies: the plain case outside FastAPI, anything else through it.
                await reply_fast_path.serve(scope, receive_bounded, send_and_note, runtime, api)
                return
            if scope["path"] == webhook.PATH:
                # Served outside FastAPI, so FastAPI would call it unknown (404).
                scope["route"] = SimpleNamespace(path=webhook.PATH)  # its metrics label
                await webhook.respond(
                    send_and_note,
                    405,
                    error_body(
                        405, f"{scope['method']} is not allowed on {webhook.PATH}; use POST"
                    ),
                    headers=[(b"allow", b"POST")],
                )
                return
            await api(scope, receive_bounded, send_and_note)
        finally:
            # The route template, not the raw path: ids in paths would explode the labels.
            name = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            HTTP_REQUESTS.labels(name, str(status)).inc()
            HTTP_SECONDS.labels(name).observe(elapsed)
            # One line per API call, under its request id; never the query string (a
            # browser may carry the API key there).
            log.log(
                logging.DEBUG if name in _POLLED_ROUTES else logging.INFO,
                "%s %s %d",
                scope["method"],
                name,
                status,
                extra={"duration_ms": round(elapsed * 1000, 1)},
            )
            request_id.reset(token)

    return app


def _incoming_request_id(scope: webhook.Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            # Bounded and printable: it ends up in logs.
            return value.decode("latin-1")[:64] if value.isascii() else ""
    return ""


def create_api(runtime: EdgeRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield
        await runtime.stop()

    api = FastAPIOffline(
        title="Kommo ⇄ n8n bridge",
        version=status.VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
    )
    api.state.runtime = runtime
    for exception, handler in ERROR_HANDLERS.items():
        api.add_exception_handler(exception, handler)
    routers = (
        status.router,
        conversations.router,
        bot.router,
        bot_rules.router,
        operations.router,
        reports.router,
        kommo.router,
        vendedores.router,
        scheduling.router,
        proactive.router,
        dashboard.router,
        privacy.router,
    )
    for router in routers:
        api.include_router(router)
    api.state.route_methods = route_methods(api, routers)
    _document_api(api)
    return api


def route_methods(
    api: FastAPI, routers: Sequence[APIRouter]
) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route's path pattern and methods: a 405 lists every method of its path
    (errors.allowed_methods), which Starlette, naming only the first route, does not."""
    routes = [*api.router.routes, *(route for router in routers for route in router.routes)]
    return [
        (route.path_regex, frozenset(route.methods))
        for route in routes
        if isinstance(route, Route) and route.methods
    ]


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _document_api(api: FastAPI) -> None:
    """The schema as callers meet the API: the webhook (served outside FastAPI, in
    webhook.py), and the one error shape on every operation."""
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = original()
        schema["paths"][webhook.PATH] = {
            "post": {
                "tags": ["conversations"],
                "summary": "Kommo webhook (form-encoded, as Kommo sends it)",
                "parameters": [
                    {
                        "name": "secret",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "example": "account[subdomain]=previdas&message[add][0][id]=…",
                        }
                    },
                },
                "responses": {
                    "200": {"description": "stored durably (or a duplicate, already stored)"},
                    "400": {
                        "description": "not a Kommo webhook, or an id outside Kommo's "
                        "range; the message names the field",
                        "content": _ERROR_CONTENT,
                    },
                    "401": {"description": "missing or wrong secret", "content": _ERROR_CONTENT},
                    "413": {"description": "body over 1 MiB", "content": _ERROR_CONTENT},
                    "503": {
                        "description": "could not be stored; Kommo will retry",
                        "content": _ERROR_CONTENT,
                    },
                },
            }
        }
        _document_errors(schema)
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation: 422 and 401 (where the key is needed) in the error shape, and the
    same shape for any other error status (`default`)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "invalid input: each field and what is wrong with it",
                    "content": _ERROR_CONTENT,
                }
            needs_key = any(
                p.get("in") == "header" and p.get("name", "").lower() == "x-api-key"
                for p in operation.get("parameters", [])
            )
            if needs_key:
                responses.setdefault(
                    "401", {"description": "missing or wrong X-API-Key", "content": _ERROR_CONTENT}
                )
                if (method.upper(), path) not in N8N_OPERATIONS:
                    responses.setdefault(
                        "403",
                        {
                            "description": "n8n's key (EDGE_N8N_API_KEY), which only answers",
                            "content": _ERROR_CONTENT,
                        },
                    )
            responses.setdefault(
                "default",
                {"description": "any other error, in the same shape", "content": _ERROR_CONTENT},
            )
    for name in ("HTTPValidationError", "ValidationError"):
        if not _referenced(schema, name):
            components.pop(name, None)


def _referenced(schema: dict[str, Any], name: str) -> bool:
    return f'"#/components/schemas/{name}"' in json.dumps(schema["paths"])
