"""The edge's HTTP API: FastAPI for everything but the webhook hot path."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import grpc
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, Field, model_validator
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.errors import BridgeError
from services.common.grpc_server import client_metadata
from services.common.redis import create_redis
from services.edge_api import webhook
from services.edge_api.batcher import WebhookBatcher
from services.edge_api.clients import SERVICE_NAMES, Clients
from services.edge_api.errors import bridge_error_handler, error_body, grpc_error_handler
from services.edge_api.settings import EdgeSettings

VERSION = "0.1.0"
_HEALTH_TIMEOUT_SECONDS = 2.0
# Deliveries wait for the lead's reply slot and Kommo's rate limit.
_REPLY_DEADLINE_SECONDS = 30.0


class SendResponseBody(BaseModel):
    """A reply from n8n for a customer (SPEC.md §3.3)."""

    model_config = {
        "json_schema_extra": {
            "examples": [{"reply_token": "9f2c…", "text": "Olá Maria! Posso ajudar?"}]
        }
    }

    reply_token: str | None = Field(default=None, max_length=200)
    conversation_id: str | None = Field(default=None, max_length=200)
    lead_id: int | None = Field(default=None, gt=0, lt=1 << 62)
    text: str = Field(default="", max_length=10_000)
    note: str | None = Field(default=None, max_length=10_000)
    idempotency_key: str | None = Field(default=None, max_length=200)
    handoff: bool = False
    handoff_reason: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _target(self) -> SendResponseBody:
        if not (self.reply_token or self.conversation_id or self.lead_id):
            raise ValueError("one of reply_token, conversation_id or lead_id is required")
        if not self.text.strip() and not self.handoff:
            raise ValueError("text is required (unless handoff is true)")
        return self


class SendResponseResult(BaseModel):
    status: str = Field(description="delivered, queued (Kommo slow: retried) or duplicate")
    conversation_id: str
    delivery_id: str
    lead_id: int | None


class EdgeRuntime:
    """What the edge holds while it runs; built inside the server's event loop (gRPC
    channels and Redis connections belong to the loop that created them)."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self._clients: Clients | None = None
        self._webhook: webhook.KommoWebhook | None = None
        self._batcher: WebhookBatcher | None = None
        self.redis: aioredis.Redis | None = None

    @property
    def clients(self) -> Clients:
        assert self._clients is not None, "the edge is not started"
        return self._clients

    @property
    def webhook(self) -> webhook.KommoWebhook:
        assert self._webhook is not None, "the edge is not started"
        return self._webhook

    def start(self) -> None:
        s = self.settings
        self._clients = Clients.connect(s)
        self._batcher = WebhookBatcher(
            self._clients.conversation,
            s.webhook_streams,
            s.webhook_max_batch,
            s.webhook_ack_timeout_seconds,
        )
        self._webhook = webhook.KommoWebhook(
            self._batcher, s.kommo_webhook_secret, s.edge_max_body_bytes
        )
        self.redis = create_redis(s.redis_url) if s.redis_url else None

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        if self._clients is not None:
            await self._clients.close()
        if self.redis is not None:
            await self.redis.aclose()


def create_app(settings: EdgeSettings) -> Any:
    """The ASGI app: the webhook fast path in front of the FastAPI application."""
    runtime = EdgeRuntime(settings)
    api = create_api(settings, runtime)
    max_body = settings.edge_max_body_bytes

    async def app(scope: webhook.Scope, receive: webhook.Receive, send: webhook.Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == webhook.PATH and scope["method"] == "POST":
                await runtime.webhook(scope, receive, send)
                return
            length = webhook.declared_length(scope)
            if length is not None and length > max_body:
                await webhook.respond(send, 413, error_body(413, f"body over {max_body} bytes"))
                return
        await api(scope, receive, send)

    return app


def create_api(settings: EdgeSettings, runtime: EdgeRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield
        await runtime.stop()

    api = FastAPI(
        title="Kommo ⇄ n8n bridge",
        version=VERSION,
        description="Kommo CRM webhooks in, n8n replies out, salespeople in control.",
        lifespan=lifespan,
    )
    api.add_exception_handler(grpc.aio.AioRpcError, grpc_error_handler)
    api.add_exception_handler(BridgeError, bridge_error_handler)
    api_key = settings.edge_api_key.encode()

    async def require_api_key(
        x_api_key: Annotated[str | None, Header(description="the bridge's API key")] = None,
    ) -> None:
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), api_key):
            raise _HttpError(401, "missing or wrong X-API-Key")

    protected = [Depends(require_api_key)]

    @api.exception_handler(_HttpError)
    async def _http_error(request: Request, exc: _HttpError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status)

    @api.get("/version", tags=["status"])
    async def version() -> dict[str, str]:
        return {"name": "kommo-n8n-bridge", "version": VERSION, "api": "v1"}

    @api.get("/health", tags=["status"])
    async def health() -> JSONResponse:
        checks = await asyncio.gather(
            *(_service_health(runtime.clients, name) for name in SERVICE_NAMES),
            _redis_health(runtime.redis),
            _kommo_status(runtime.clients),
        )
        services = dict(zip(SERVICE_NAMES, checks[: len(SERVICE_NAMES)], strict=True))
        redis_state, kommo = checks[len(SERVICE_NAMES)], checks[len(SERVICE_NAMES) + 1]
        healthy = all(v == "SERVING" for v in services.values()) and redis_state in ("ok", None)
        body = {
            "status": "ok" if healthy else "degraded",
            "version": VERSION,
            "services": services,
            "redis": redis_state,
            "kommo": kommo,
        }
        if healthy and isinstance(kommo, dict) and kommo.get("token_state") == "refresh_refused":
            body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if healthy else 503)

    @api.get("/webhooks/test", tags=["test & debug"], dependencies=protected)
    async def webhooks_test() -> dict[str, Any]:
        status = await runtime.clients.conversation.GetWebhookStatus(
            conv.GetWebhookStatusRequest(), metadata=client_metadata()
        )
        last = status.last_received_at
        public = settings.edge_public_url.rstrip("/")
        return {
            "configured": True,
            "register_in_kommo": f"{public}{webhook.PATH}?secret={settings.kommo_webhook_secret}",
            "events": ["add_message", "add_lead", "status_lead"],
            "last_received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last))
            if last
            else None,
            "seconds_since_last": round(time.time() - last, 1) if last else None,
            "received_total": status.received_total,
        }

    @api.post(
        "/send-response",
        tags=["conversations"],
        dependencies=protected,
        response_model=SendResponseResult,
        responses={
            202: {"description": "stored; Kommo is slow or down and delivery is retried"},
            404: {"description": "unknown reply_token, conversation or lead"},
            409: {"description": "a person took the conversation over: not sent"},
        },
    )
    async def send_response(body: SendResponseBody) -> JSONResponse:
        answer = await runtime.clients.conversation.SendReply(
            conv.SendReplyRequest(
                reply_token=body.reply_token or "",
                conversation_id=body.conversation_id or "",
                lead_id=body.lead_id or 0,
                text=body.text,
                note=body.note or "",
                idempotency_key=body.idempotency_key or "",
                handoff=body.handoff,
                handoff_reason=body.handoff_reason or "",
            ),
            timeout=_REPLY_DEADLINE_SECONDS,
            metadata=client_metadata(),
        )
        result = SendResponseResult(
            status=answer.status,
            conversation_id=answer.conversation_id,
            delivery_id=answer.delivery_id,
            lead_id=answer.lead_id or None,
        )
        return JSONResponse(
            result.model_dump(), status_code=202 if answer.status == "queued" else 200
        )

    _document_webhook(api)
    return api


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _service_health(clients: Clients, name: str) -> str:
    try:
        answer = await clients.health(name).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES[name]),
            timeout=_HEALTH_TIMEOUT_SECONDS,
        )
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def _redis_health(redis: aioredis.Redis | None) -> str | None:
    if redis is None:
        return None
    try:
        await asyncio.wait_for(redis.ping(), _HEALTH_TIMEOUT_SECONDS)
    except (RedisError, OSError, TimeoutError) as exc:
        return f"down ({type(exc).__name__})"
    return "ok"


async def _kommo_status(clients: Clients) -> dict[str, Any] | str:
    try:
        status = await clients.gateway.GetStatus(
            gw.GetStatusRequest(), timeout=_HEALTH_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as exc:
        return f"unknown ({exc.code().name})"
    return {
        "mode": status.kommo_mode,
        "base_url": status.base_url,
        "token_state": status.token_state,
        "token_expires_at": status.token_expires_at or None,
        "detail": status.detail or None,
    }


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
