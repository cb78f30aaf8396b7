"""The n8n stand-in answers like the example workflow (examples/n8n) when WhatsApp's
24-hour window is closed: a proactive start whose envelope says `window_open: false` and
offers a proactive template is answered with that template — the trigger's own first, then
the general one — never with free text; every other envelope with text, as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from devstack.processes import free_port
from sandbox.n8n_standin.app import StandinConfig, create_app

API_KEY = "standin-key"


class Bridge:
    """A /send-response that records what the stand-in answered."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.url = ""

    async def send_response(self, request: web.Request) -> web.Response:
        assert request.headers["X-API-Key"] == API_KEY
        self.answers.append(await request.json())
        return web.json_response({"status": "delivered"})


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    recorder = Bridge()
    app = web.Application()
    app.router.add_post("/send-response", recorder.send_response)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    recorder.url = f"http://127.0.0.1:{port}/send-response"
    try:
        yield recorder
    finally:
        await runner.cleanup()


@pytest.fixture
async def standin() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(StandinConfig(api_key=API_KEY))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://standin") as client:
        yield client


def envelope(
    bridge: Bridge,
    *,
    event: str = "conversation.proactive",
    window_open: bool | None = False,
    templates: tuple[str, ...] | list[str] = (),
    trigger: str | None = "form",
) -> dict[str, Any]:
    conversation: dict[str, Any] = {"id": "c1", "lead_id": 9100020, "origin": None}
    if window_open is not None:
        conversation |= {"window_open": window_open, "window_open_until": None}
    return {
        "event": event,
        "event_id": f"evt-{len(bridge.answers)}-{event}-{window_open}-{'.'.join(templates)}",
        "conversation": conversation,
        "contact": {"id": 1, "name": "Maria Souza"},
        "vendedor": {"id": 2, "name": "Ana Lima"},
        "messages": [] if event == "conversation.proactive" else [{"text": "Oi"}],
        "trigger": trigger if event == "conversation.proactive" else None,
        "callback": {"url": bridge.url, "reply_token": "token-1"},
        "templates": [{"purpose": p, "variables": ["vendedor"]} for p in templates],
    }


async def answer_to(
    standin: httpx.AsyncClient, bridge: Bridge, body: dict[str, Any]
) -> dict[str, Any]:
    before = len(bridge.answers)
    assert (await standin.post("/webhook/bridge", json=body)).status_code == 200
    for _ in range(200):
        if len(bridge.answers) > before:
            return bridge.answers[-1]
        await asyncio.sleep(0.02)
    raise AssertionError("the stand-in did not answer the bridge")


async def test_a_proactive_start_into_a_closed_window_is_answered_with_its_template(
    standin: httpx.AsyncClient, bridge: Bridge
) -> None:
    both = envelope(bridge, templates=["proactive", "proactive:form", "reopen"])
    assert await answer_to(standin, bridge, both) == {
        "reply_token": "token-1",
        "template": "proactive:form",
    }
    general = envelope(bridge, templates=["reopen", "proactive"])
    assert await answer_to(standin, bridge, general) == {
        "reply_token": "token-1",
        "template": "proactive",
    }


@pytest.mark.parametrize(
    "case",
    [
        # No proactive template to send: text, which the bridge keeps behind its own.
        {"templates": ["reopen", "proactive:download"]},
        {"templates": []},
        # The window is open, or the envelope does not say: text as always.
        {"window_open": True, "templates": ["proactive"]},
        {"window_open": None, "templates": ["proactive"]},
        # The customer just wrote: never a template.
        {"event": "message.received", "templates": ["proactive", "reopen"]},
    ],
    ids=["no-proactive-template", "no-templates", "open", "unknown", "message"],
)
async def test_otherwise_the_answer_is_text_as_before(
    standin: httpx.AsyncClient, bridge: Bridge, case: dict[str, Any]
) -> None:
    answer = await answer_to(standin, bridge, envelope(bridge, **case))
    assert "template" not in answer
    assert answer["reply_token"] == "token-1"
    assert answer["text"].startswith("Olá, Maria!")
