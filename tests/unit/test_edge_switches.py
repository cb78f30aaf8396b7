"""Debug and reset endpoints can be switched off; keys are checked before anything."""

from __future__ import annotations

import httpx

from services.edge_api.app import create_app
from services.edge_api.settings import EdgeSettings

KEY = "k" * 24


def _client(debug: bool) -> httpx.AsyncClient:
    settings = EdgeSettings(
        redis_url="",
        edge_api_key=KEY,
        kommo_webhook_secret="s" * 24,
        edge_debug_endpoints=debug,
        conversation_addr="127.0.0.1:1",
        kommo_gateway_addr="127.0.0.1:1",
        vendedor_addr="127.0.0.1:1",
        scheduling_addr="127.0.0.1:1",
    )
    # No lifespan: these answers must come before any call to a service.
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://edge"
    )


async def test_debug_and_reset_answer_404_when_switched_off() -> None:
    client = _client(debug=False)
    headers = {"X-API-Key": KEY}
    for method, path in (("GET", "/debug/conversations"), ("DELETE", "/reset/conversations")):
        answer = await client.request(method, path, headers=headers)
        assert answer.status_code == 404
        assert "EDGE_DEBUG_ENDPOINTS" in answer.json()["error"]


async def test_protected_endpoints_refuse_a_missing_key_first() -> None:
    client = _client(debug=True)
    for method, path in (
        ("GET", "/stats"),
        ("GET", "/conversations/active"),
        ("POST", "/bot-control"),
        ("POST", "/vendedor/comandos"),
        ("GET", "/vendedores"),
        ("DELETE", "/reset/conversations"),
        ("POST", "/send-response"),
    ):
        assert (await client.request(method, path)).status_code == 401, path
