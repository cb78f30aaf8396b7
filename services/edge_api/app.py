"""The edge's HTTP API: FastAPI for everything but the webhook hot path."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from fastapi import FastAPI

from services.common.errors import BridgeError
from services.common.logs import request_id
from services.common.metrics import HTTP_REQUESTS, HTTP_SECONDS
from services.edge_api import webhook
from services.edge_api.errors import (
    HttpError,
    bridge_error_handler,
    error_body,
    grpc_error_handler,
    http_error_handler,
)
from services.edge_api.routes import (
    bot,
    conversations,
    dashboard,
    kommo,
    operations,
    proactive,
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


def create_app(settings: EdgeSettings) -> Any:
    """The ASGI app: the webhook fast path in front of the FastAPI application."""
    runtime = EdgeRuntime(settings)
    api = create_api(runtime)
    max_body = settings.edge_max_body_bytes

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

        try:
            length = webhook.declared_length(scope)
            if length is not None and length > max_body:
                await webhook.respond(
                    send_and_note, 413, error_body(413, f"body over {max_body} bytes")
                )
                return
            await api(scope, receive, send_and_note)
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

    api = FastAPI(
        title="Kommo ⇄ n8n bridge",
        version=status.VERSION,
        description="Kommo CRM webhooks in, n8n replies out, salespeople in control.",
        lifespan=lifespan,
    )
    api.state.runtime = runtime
    api.add_exception_handler(grpc.aio.AioRpcError, grpc_error_handler)
    api.add_exception_handler(BridgeError, bridge_error_handler)
    api.add_exception_handler(HttpError, http_error_handler)
    for router in (
        status.router,
        conversations.router,
        bot.router,
        operations.router,
        kommo.router,
        vendedores.router,
        scheduling.router,
        proactive.router,
        dashboard.router,
    ):
        api.include_router(router)
    _document_webhook(api)
    return api


def _document_webhook(api: FastAPI) -> None:
    """The webhook is served outside FastAPI (webhook.py); describe it in the schema."""
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
                    "400": {"description": "not a Kommo webhook; the message says why"},
                    "401": {"description": "missing or wrong secret"},
                    "413": {"description": "body over 1 MiB"},
                    "503": {"description": "could not be stored; Kommo will retry"},
                },
            }
        }
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
