"""A redirect from n8n is never followed: the envelope, its signature and the auth header
would go to whatever host the answer names. Two real HTTP servers on local ports: the
"n8n" answers 3xx pointing at the other, which records anything that reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from services.common.n8n import N8nClient

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


@dataclass
class Servers:
    n8n_url: str = ""
    elsewhere: str = ""  # host:port of the server the redirect points at
    status: int = 307
    location: str = ""
    redirected: int = 0
    reached_elsewhere: list[dict[str, str]] = field(default_factory=list)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    state = Servers()

    async def elsewhere(request: web.Request) -> web.Response:
        await request.read()
        state.reached_elsewhere.append(dict(request.headers))
        return web.Response(text="got it")

    async def n8n(request: web.Request) -> web.Response:
        await request.read()
        state.redirected += 1
        return web.Response(status=state.status, headers={"Location": state.location})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", elsewhere)
    other_runner, other_port = await _serve(other)
    app = web.Application()
    app.router.add_post("/webhook/bridge", n8n)
    app.router.add_route("*", "/moved", elsewhere)  # a redirect within n8n's own host
    runner, port = await _serve(app)
    state.n8n_url = f"http://127.0.0.1:{port}/webhook/bridge"
    state.elsewhere = f"127.0.0.1:{other_port}"
    state.location = f"http://{state.elsewhere}/collect?x=1"
    try:
        yield state
    finally:
        await runner.cleanup()
        await other_runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_host_is_not_followed_and_not_retried(
    servers: Servers, status: int
) -> None:
    servers.status = status
    sender = N8nClient(auth_header="X-N8N-Key: k3y", signing_secret=SECRET, timeout_seconds=2.0)
    try:
        attempt = await sender.post(servers.n8n_url, "evt-1", '{"event": "x"}', "req-1")
    finally:
        await sender.aclose()
    assert servers.redirected == 1
    assert servers.reached_elsewhere == []  # neither the envelope nor the key got there
    # A configuration error: parked as a dead letter with the reason, never retried blindly.
    assert (attempt.ok, attempt.retry) == (False, False)
    assert attempt.detail == f"n8n answered {status} redirect to {servers.elsewhere}: not followed"


async def test_a_redirect_within_n8n_is_not_followed_either(servers: Servers) -> None:
    servers.location = "/moved"
    sender = N8nClient(auth_header="", signing_secret="", timeout_seconds=2.0)
    try:
        attempt = await sender.post(servers.n8n_url, "evt-1", "{}")
    finally:
        await sender.aclose()
    n8n_host = servers.n8n_url.split("/")[2]
    assert servers.reached_elsewhere == []
    assert (attempt.ok, attempt.retry) == (False, False)
    assert attempt.detail == f"n8n answered 307 redirect to {n8n_host}: not followed"
