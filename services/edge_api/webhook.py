"""`POST /webhooks/kommo` as a bare ASGI handler: the hot path, kept off the framework.

Kommo gives a webhook about two seconds and sends leads in bursts, so this path does
only what the ack needs: check the secret, bound the body, hand the raw bytes to the
batcher, answer. Parsing happens in the conversation service, next to the store.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.errors import Unavailable
from services.common.metrics import HTTP_REQUESTS, WEBHOOK_REFUSALS
from services.edge_api.batcher import WebhookBatcher
from services.edge_api.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATH = "/webhooks/kommo"
_JSON_HEADERS = [(b"content-type", b"application/json")]


_ANSWERS: dict[int, Any] = {}


def _count(status: int) -> None:
    """Count an answer of the webhook path (the labelled child is looked up once)."""
    child = _ANSWERS.get(status)
    if child is None:
        child = _ANSWERS[status] = HTTP_REQUESTS.labels(PATH, str(status))
    child.inc()


async def respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(body, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON_HEADERS,
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@lru_cache(maxsize=64)
def _accepted(stored: int, duplicates: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"status": "accepted", "stored": stored, "duplicates": duplicates}).encode()
    return [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())], body


async def respond_accepted(send: Send, stored: int, duplicates: int) -> None:
    """The 200 of the hot path, encoded once per (stored, duplicates) pair."""
    headers, body = _accepted(stored, duplicates)
    _count(200)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    _count(status)
    await respond(send, status, body)


class KommoWebhook:
    def __init__(self, batcher: WebhookBatcher, secret: str, max_body: int) -> None:
        self._batcher = batcher
        self._secret = secret.encode()
        self._max_body = max_body

    def _secret_ok(self, query: bytes) -> bool:
        given = b""
        # Latin-1 both ways: every byte, %-escaped or not, survives as itself, so any
        # query (%FF included) is compared as bytes and never raises.
        for key, value in parse_qsl(query.decode("latin-1"), encoding="latin-1"):
            if key == "secret":
                given = value.encode("latin-1")
        return hmac.compare_digest(given, self._secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._secret_ok(scope.get("query_string", b"")):
            await _answer(send, 401, error_body(401, "missing or wrong webhook secret"))
            return
        length = declared_length(scope)
        if length is not None and length > self._max_body:
            await _answer(send, 413, error_body(413, f"body over {self._max_body} bytes"))
            return
        try:
            body = await read_body(receive, self._max_body)
        except BodyTooLarge:
            await _answer(send, 413, error_body(413, f"body over {self._max_body} bytes"))
            return
        if not body.strip():
            await _answer(send, 400, error_body(400, "empty body: expected Kommo's form fields"))
            return
        try:
            result = await self._batcher.submit(body)
        except Unavailable as exc:
            await _answer(send, 503, error_body(503, f"not stored, retry later: {exc}"))
            return
        if result.outcome == pb.INGEST_OUTCOME_STORED:
            for reason in result.skipped:
                WEBHOOK_REFUSALS.labels("item", reason).inc()
            await respond_accepted(send, result.stored, result.duplicates)
        elif result.outcome == pb.INGEST_OUTCOME_INVALID:
            WEBHOOK_REFUSALS.labels("body", result.reason or "invalid").inc()
            await _answer(send, 400, error_body(400, result.error))
        else:
            await _answer(send, 503, error_body(503, f"not stored, retry later: {result.error}"))
