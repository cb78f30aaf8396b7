"""`POST /send-response` without FastAPI's routing and dependency solving, for the request
n8n sends on every reply (issue 22: the framework was most of the edge's CPU a reply).

Only the plain case is served here: a JSON body that a valid key sent and that
validates as `SendResponseBody`, answered by the same code as the route
(`routes/conversations.answer_reply`, the same error handlers). Anything else — no key or
a wrong one, another content type, a body that does not validate — is handed to FastAPI
with the body already read, so every refusal is the documented one, word for word. The
OpenAPI document still describes the route.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from services.common.errors import BridgeError
from services.edge_api.deps import caller
from services.edge_api.errors import (
    bridge_error_handler,
    error_response,
    grpc_error_handler,
    unexpected_error_handler,
)
from services.edge_api.routes.conversations import SendResponseBody, answer_reply
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.webhook import Message, Receive, Scope, Send

log = logging.getLogger(__name__)

PATH = "/send-response"
_JSON = b"application/json"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and whether it arrived whole (a disconnect ends it early)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for FastAPI: the body read here, then whatever comes next."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def serve(scope: Scope, receive: Receive, send: Send, runtime: EdgeRuntime, api: Any) -> None:
    """Serve a `POST /send-response` (`receive` already bounds the body's size)."""
    key = _header(scope, b"x-api-key")
    content_type = _header(scope, b"content-type") or b""
    if (
        key is None
        or caller(runtime.settings, key.decode("latin-1")) is None
        or content_type.split(b";", 1)[0].strip().lower() != _JSON
    ):
        await api(scope, receive, send)  # refused (or not JSON) exactly as documented
        return
    try:
        body, whole = await _read(receive)
    except StarletteHTTPException as exc:  # over EDGE_MAX_BODY_BYTES, as it arrived
        await error_response(exc.status_code, str(exc.detail))(scope, receive, send)
        return
    parsed: SendResponseBody | None = None
    if whole:
        try:
            parsed = SendResponseBody.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):
            parsed = None
    if parsed is None:
        await api(scope, _replaying(body, receive), send)
        return
    response: Response
    try:
        response = await answer_reply(parsed, runtime.clients)
    except grpc.aio.AioRpcError as exc:
        response = await grpc_error_handler(None, exc)  # type: ignore[arg-type]
    except BridgeError as exc:
        response = await bridge_error_handler(None, exc)  # type: ignore[arg-type]
    except Exception as exc:
        log.exception("unhandled error in POST %s", PATH)
        response = await unexpected_error_handler(None, exc)  # type: ignore[arg-type]
    scope["route"] = _ROUTE  # its metrics label, as FastAPI's route would set it
    await response(scope, receive, send)


class _Route:
    path = PATH


_ROUTE = _Route()
