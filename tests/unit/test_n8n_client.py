"""The n8n client against a real HTTP server on a local port: what each answer means for
the retry, the signature and request id it sends, and the proxy it takes from the
environment."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from services.common.n8n import N8nClient, proxy_for

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


@dataclass
class N8n:
    url: str
    status: int = 200
    body: str = '{"ok": true}'
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def n8n() -> AsyncIterator[N8n]:
    state = N8n(url="")

    async def webhook(request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        state.seen.append({"headers": headers, "raw": raw.decode()})
        await asyncio.sleep(state.delay)
        return web.Response(status=state.status, text=state.body)

    app = web.Application()
    app.router.add_post("/webhook/bridge", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/webhook/bridge"
    yield state
    await runner.cleanup()


def client(**overrides: Any) -> N8nClient:
    options: dict[str, Any] = {
        "auth_header": "X-N8N-Key: k3y",
        "signing_secret": SECRET,
        "timeout_seconds": 2.0,
    }
    return N8nClient(**(options | overrides))


async def test_a_2xx_is_delivered_signed_with_the_request_id(n8n: N8n) -> None:
    sender = client()
    payload = json.dumps({"event": "message.received", "text": "olá"}, ensure_ascii=False)
    try:
        attempt = await sender.post(n8n.url, "evt-1", payload, request_id="req-9")
    finally:
        await sender.aclose()
    assert (attempt.ok, attempt.retry, attempt.detail) == (True, False, "200")
    headers = n8n.seen[0]["headers"]
    assert n8n.seen[0]["raw"] == payload
    assert headers["x-n8n-key"] == "k3y"
    assert headers["x-request-id"] == "req-9"
    assert headers["content-type"] == "application/json"
    # The signature verifies with the secret, as n8n's check (or any standard-webhooks
    # library) would verify it.
    Webhook(SECRET).verify(payload, headers)


@pytest.mark.parametrize(
    ("status", "retry"), [(500, True), (503, True), (429, True), (408, True), (404, False)]
)
async def test_an_error_answer_says_whether_to_try_again(
    n8n: N8n, status: int, retry: bool
) -> None:
    n8n.status, n8n.body = status, "workflow " + "x" * 5000
    sender = client()
    try:
        attempt = await sender.post(n8n.url, "evt-1", "{}")
    finally:
        await sender.aclose()
    assert (attempt.ok, attempt.retry) == (False, retry)
    assert attempt.detail.startswith(f"n8n answered {status}: workflow x")
    assert len(attempt.detail) < 250  # never the whole body


async def test_unreachable_and_slow_are_retried(n8n: N8n) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    n8n.delay = 1.0
    sender = client(timeout_seconds=0.2)
    try:
        refused = await sender.post(f"http://127.0.0.1:{closed_port}/x", "evt-1", "{}")
        slow = await sender.post(n8n.url, "evt-2", "{}")
    finally:
        await sender.aclose()
    assert (refused.ok, refused.retry) == (False, True)
    assert refused.detail.startswith("n8n unreachable: ")
    assert (slow.ok, slow.retry, slow.detail) == (False, True, "n8n unreachable: TimeoutError")


def test_the_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://n8n.example.com/webhook/x") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp")
    assert proxy_for("https://n8n.example.com/webhook/x") == "http://proxy.internal:3128"
    assert proxy_for("http://n8n.example.com/webhook/x") is None  # no HTTP_PROXY
    assert proxy_for("https://n8n.corp/webhook/x") is None
    assert proxy_for("http://127.0.0.1:5678/webhook/x") is None


class SplitAnswers:
    """An HTTP/1.1 server that sends a 200's headers, then its body in a later write
    (`body_after` s; None: never), and counts the connections it was given."""

    def __init__(self, body_after: float | None) -> None:
        self.body_after = body_after
        self.connections = 0
        self.url = ""
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> SplitAnswers:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/webhook/bridge"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        body = b'{"message":"Workflow was started"}'
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body)
                )
                await writer.drain()
                if self.body_after is None:
                    await reader.read()  # until the client gives up on the connection
                    return
                await asyncio.sleep(self.body_after)
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def test_a_2xx_whose_body_comes_later_keeps_its_connection() -> None:
    async with SplitAnswers(body_after=0.05) as server:
        n8n_client = client()
        try:
            for n in range(3):
                attempt = await n8n_client.post(server.url, f"evt-{n}", "{}")
                assert attempt.ok
        finally:
            await n8n_client.aclose()
        # One connection for the three envelopes: none was closed for an unread body.
        assert server.connections == 1


async def test_a_2xx_whose_body_never_comes_is_still_delivered() -> None:
    async with SplitAnswers(body_after=None) as server:
        n8n_client = client()
        try:
            started = asyncio.get_running_loop().time()
            attempt = await n8n_client.post(server.url, "evt-1", "{}")
            assert attempt.ok and not attempt.retry
            assert asyncio.get_running_loop().time() - started < 1.5
        finally:
            await n8n_client.aclose()
