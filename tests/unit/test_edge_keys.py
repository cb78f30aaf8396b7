"""The edge's two keys, the debug switch and what /health says to whom (issue 19, item 7):
settings, and answers decided before any service is called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from pydantic import ValidationError

from services.common.settings import configuration_errors
from services.edge_api.app import create_api, create_app
from services.edge_api.cache import SharedResult
from services.edge_api.clients import Clients
from services.edge_api.deps import N8N_ONLY_ANSWERS, Caller, caller
from services.edge_api.routes.status import HealthReport
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.settings import EdgeSettings

OPERATOR = "o" * 24
N8N = "n" * 24


def settings(**overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "redis_url": "",
        "edge_api_key": OPERATOR,
        "edge_n8n_api_key": N8N,
        "kommo_webhook_secret": "s" * 24,
        "conversation_addr": "127.0.0.1:1",
        "kommo_gateway_addr": "127.0.0.1:1",
        "vendedor_addr": "127.0.0.1:1",
        "scheduling_addr": "127.0.0.1:1",
        "kommo_sandbox": False,
    }
    return EdgeSettings(**{**values, **overrides})


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        settings(**overrides)
    return configuration_errors(refused.value, "EdgeSettings")


# Settings


def test_the_n8n_key_is_optional() -> None:
    without = settings(edge_n8n_api_key="")
    assert without.edge_n8n_api_key == ""
    assert "" not in without.secrets()
    assert N8N in settings().secrets()  # masked in logs like the others


@pytest.mark.parametrize("weak", ["short", "change-me-change-me", "xxx"])
def test_a_weak_n8n_key_is_refused_like_the_operators(weak: str) -> None:
    (line,) = problems(edge_n8n_api_key=weak)
    assert line.startswith("configuration error: EDGE_N8N_API_KEY: must be a real secret")
    assert weak not in line.removeprefix("configuration error: EDGE_N8N_API_KEY")


def test_the_n8n_key_must_differ_from_the_operators() -> None:
    (line,) = problems(edge_n8n_api_key=OPERATOR)
    assert line.startswith("configuration error: EDGE_N8N_API_KEY: must differ from EDGE_API_KEY")
    assert OPERATOR not in line


@pytest.mark.parametrize(
    ("sandbox", "switch", "on"),
    [
        (False, None, False),  # production, unset: off
        (True, None, True),  # the sandbox, unset: on (make run, the tests)
        (False, True, True),
        (True, False, False),
    ],
)
def test_debug_endpoints_are_off_by_default_outside_the_sandbox(
    sandbox: bool, switch: bool | None, on: bool
) -> None:
    overrides: dict[str, Any] = {"kommo_sandbox": sandbox}
    if switch is not None:
        overrides["edge_debug_endpoints"] = switch
    assert settings(**overrides).debug_endpoints_on is on


def test_whose_key_it_is() -> None:
    s = settings()
    assert caller(s, OPERATOR) is Caller.OPERATOR
    assert caller(s, N8N) is Caller.N8N
    assert caller(s, None) is None
    assert caller(s, "n" * 23) is None
    # Without an n8n key, nothing (not even an empty header) is taken for it.
    assert caller(settings(edge_n8n_api_key=""), "") is None


# Answers


@pytest.fixture
async def edge() -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: each answer here comes before any call to a service.
    transport = httpx.ASGITransport(app=create_app(settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/vendedores"),
        ("GET", "/bot-rules"),
        ("PUT", "/bot-rules"),
        ("DELETE", "/leads/1/data"),
        ("DELETE", "/reset/conversations"),
        ("GET", "/debug/conversations"),
        ("GET", "/webhooks/test"),
        ("POST", "/webhooks/register"),
        ("GET", "/stats"),
        ("POST", "/bot-control"),
        ("POST", "/start-proactive"),
        ("POST", "/agendamento/request"),
        ("GET", "/agendamento/x"),
        ("GET", "/dashboard/data"),
        ("POST", "/dead-letters/x/replay"),
        ("GET", "/health"),
    ],
)
async def test_the_n8n_key_gets_403_everywhere_but_where_it_answers(
    edge: httpx.AsyncClient, method: str, path: str
) -> None:
    answer = await edge.request(method, path, headers={"X-API-Key": N8N}, json={})
    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": N8N_ONLY_ANSWERS, "status": 403}
    assert "POST /send-response" in N8N_ONLY_ANSWERS


async def test_the_n8n_key_opens_no_browser_link_nor_metrics() -> None:
    app = create_app(settings(edge_metrics_require_key=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        link = await client.get("/oauth/authorize", params={"api_key": N8N})
        assert link.status_code == 403
        metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {N8N}"})
        assert metrics.status_code == 403


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/send-response", N8N),
        ("/send-response", OPERATOR),
        ("/agendamento/x/status", N8N),
        ("/agendamento/x/status", OPERATOR),
    ],
)
async def test_both_keys_answer(path: str, key: str) -> None:
    runtime = EdgeRuntime(settings())
    runtime._clients = cast(Clients, object())  # never called: the body is refused first
    transport = httpx.ASGITransport(app=create_api(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        # Past the key: the (empty) body is what is refused.
        answer = await client.post(path, headers={"X-API-Key": key}, json={})
    assert answer.status_code == 422, answer.text


async def test_a_wrong_key_is_401_whatever_the_endpoint(edge: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/send-response"), ("GET", "/vendedores"), ("GET", "/health")):
        answer = await edge.request(method, path, headers={"X-API-Key": "w" * 24})
        assert answer.status_code == 401, path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/debug/conversations"),
        ("DELETE", "/reset/conversations"),
        ("GET", "/webhooks/test"),
    ],
)
async def test_debug_endpoints_off_say_how_to_turn_them_on(
    edge: httpx.AsyncClient, method: str, path: str
) -> None:
    answer = await edge.request(method, path, headers={"X-API-Key": OPERATOR})
    assert answer.status_code == 404
    assert "set EDGE_DEBUG_ENDPOINTS=true to turn them on" in answer.json()["error"]
    assert (await edge.request(method, path)).status_code == 401


async def test_the_schema_says_which_operations_refuse_the_n8n_key(
    edge: httpx.AsyncClient,
) -> None:
    paths = (await edge.get("/openapi.json")).json()["paths"]
    assert "403" in paths["/vendedores"]["get"]["responses"]
    assert "403" not in paths["/send-response"]["post"]["responses"]
    assert "403" not in paths["/agendamento/{agendamento_id}/status"]["post"]["responses"]


# /health


def health_client(
    status: str, code: int, calls: list[int]
) -> tuple[httpx.AsyncClient, EdgeRuntime]:
    runtime = EdgeRuntime(settings())
    body = {"status": status, "services": {"conversation": "SERVING"}, "problems": []}

    async def report() -> HealthReport:
        calls.append(1)
        return HealthReport(body, code, None)

    runtime.health = SharedResult(report, ttl=60)
    transport = httpx.ASGITransport(app=create_api(runtime))
    return httpx.AsyncClient(transport=transport, base_url="http://edge"), runtime


@pytest.mark.parametrize(("status", "code"), [("ok", 200), ("degraded", 503)])
async def test_health_without_a_key_says_only_the_status(status: str, code: int) -> None:
    calls: list[int] = []
    client, _ = health_client(status, code, calls)
    async with client:
        public = await client.get("/health")
        assert (public.status_code, public.json()) == (code, {"status": status})
        full = await client.get("/health", headers={"X-API-Key": OPERATOR})
        assert full.status_code == code
        assert full.json()["services"] == {"conversation": "SERVING"}
        assert len(calls) == 2  # the operator's answer was checked now
        for _ in range(20):
            await client.get("/health")
    assert len(calls) == 2  # every answer without the key from the last round of checks
