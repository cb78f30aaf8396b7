"""The door every Kommo-side request passes, in Kommo's order: a block or an outage first,
then the rate limit, then the bearer token, then any failure a test injected.

Control endpoints (``/_sandbox/…``) bypass it entirely: they are not Kommo.
"""

from __future__ import annotations

import asyncio
import enum
import time

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.kommo.responses import KommoProblem, injected_failure, nginx_page, rate_limited
from sandbox.kommo.runtime import Sandbox

CONTROL_PREFIX = "/_sandbox"
OAUTH_ENDPOINT = "/oauth2/access_token"
CHATS_PREFIX = "/v2/origin/custom/"


class RouteKind(enum.Enum):
    CONTROL = "control"
    # REST API: bearer token and rate limit.
    API = "api"
    # The token endpoint counts towards the rate limit but takes no bearer token.
    OAUTH = "oauth"
    # amojo lives on its own host in Kommo: signed requests, outside the REST rate limit.
    CHATS = "chats"
    OTHER = "other"


def classify(path: str) -> RouteKind:
    if path.startswith(CONTROL_PREFIX):
        return RouteKind.CONTROL
    if path.startswith("/api/"):
        return RouteKind.API
    if path == OAUTH_ENDPOINT:
        return RouteKind.OAUTH
    if path.startswith(CHATS_PREFIX):
        return RouteKind.CHATS
    return RouteKind.OTHER


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _discard(message: Message) -> None:
    del message


class KommoGate:
    """ASGI middleware applying blocks, outages, latency, rate limit, auth and faults."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or classify(scope["path"]) is RouteKind.CONTROL:
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        status = 500
        try:
            status = await self._handle(scope, receive, send)
        finally:
            self.sandbox.traffic.record(
                scope["method"],
                scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                status,
                arrived,
            )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        faults = self.sandbox.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return refusal.status_code
        rule = faults.take(scope["method"], scope["path"])
        if rule is None:
            return await self._forward(scope, receive, send)
        if rule.apply_effect:
            activity = self.sandbox.activity
            before = activity.scheduled()
            await self._forward(scope, receive, _discard)
            if rule.await_effect:
                await activity.settle(activity.scheduled() - before)
        answer = injected_failure(rule.status)
        await answer(scope, receive, send)
        return answer.status_code

    def _refusal(self, scope: Scope) -> Response | None:
        kind = classify(scope["path"])
        faults = self.sandbox.faults
        if faults.blocked:
            return nginx_page(403)
        if faults.down:
            return nginx_page(503)
        if kind in (RouteKind.API, RouteKind.OAUTH) and not self.sandbox.admit_request():
            return rate_limited()
        if kind is RouteKind.API and not self.sandbox.tokens.is_valid_access_token(
            bearer_token(Headers(scope=scope))
        ):
            return KommoProblem(401, "Unauthorized").response()
        return None

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        return status
