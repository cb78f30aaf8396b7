"""The edge's contract at its door, with no service behind it: one error shape for every
status, ids outside Kommo's range refused, inputs never echoed, what is public, and the
documentation pages working offline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
from fastapi import Request

from services.common.kommo_ids import KOMMO_ID_MAX
from services.edge_api.app import create_app
from services.edge_api.errors import MAX_FIELD_ERRORS, grpc_error_handler
from services.edge_api.settings import EdgeSettings

KEY = "k" * 24
SECRET = "s" * 24
AUTH = {"X-API-Key": KEY}
# Nothing listens there: a call that reaches a service fails, so every answer below is
# one the edge decides by itself.
NOWHERE = "127.0.0.1:1"
# An answer about a 100 KB input stays this small.
SMALL_ANSWER_BYTES = 2_000


def _settings(**overrides: Any) -> EdgeSettings:
    return EdgeSettings(
        redis_url="",
        edge_api_key=KEY,
        kommo_webhook_secret=SECRET,
        conversation_addr=NOWHERE,
        kommo_gateway_addr=NOWHERE,
        vendedor_addr=NOWHERE,
        scheduling_addr=NOWHERE,
        **overrides,
    )


@asynccontextmanager
async def edge(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The edge's ASGI app, started (its lifespan) and stopped like under uvicorn."""
    app = create_app(_settings(**overrides))
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


def assert_error_shape(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert "detail" not in body
    return body


async def test_an_unknown_route_is_404_in_the_error_shape() -> None:
    async with edge() as client:
        body = assert_error_shape(await client.get("/no-such-thing", headers=AUTH), 404)
    assert "GET /no-such-thing" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/webhooks/kommo", "POST"),
        ("PUT", "/webhooks/kommo", "POST"),
        ("DELETE", "/version", "GET"),
        ("GET", "/send-response", "POST"),
        # A path served by several routes allows every one of their methods.
        ("DELETE", "/bot-rules", "GET, PUT"),
        ("POST", "/bot-rules", "GET, PUT"),
        ("PUT", "/agendamento/17", "GET"),
    ],
)
async def test_a_wrong_method_is_405_with_allow(method: str, path: str, allowed: str) -> None:
    async with edge() as client:
        answer = await client.request(method, path, headers=AUTH)
    body = assert_error_shape(answer, 405)
    assert answer.headers["allow"] == allowed
    assert f"use {allowed}" in body["error"]


async def test_a_missing_key_is_401_in_the_error_shape() -> None:
    async with edge() as client:
        body = assert_error_shape(await client.get("/stats"), 401)
    assert "X-API-Key" in body["error"]


async def test_a_body_over_the_limit_is_413_with_or_without_content_length() -> None:
    big = b'{"text": "' + b"a" * (1 << 20) + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with edge() as client:
        declared = await client.post("/send-response", content=big, headers=AUTH)
        streamed = await client.post("/send-response", content=chunked(), headers=AUTH)
    assert_error_shape(declared, 413)
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert_error_shape(streamed, 413)


async def test_a_422_names_the_field_and_never_echoes_a_100_kb_input() -> None:
    huge = "x" * 100_000
    async with edge() as client:
        answer = await client.post("/vendedor/comandos", json={"command": huge}, headers=AUTH)
    body = assert_error_shape(answer, 422)
    assert len(answer.content) < SMALL_ANSWER_BYTES
    assert "xxxxxxxxxx" not in answer.text
    assert body["fields"] == [
        {"field": "body.command", "problem": "String should have at most 200 characters"}
    ]
    assert body["error"].startswith("invalid request: body.command: ")


async def test_a_422_with_many_problems_stays_bounded() -> None:
    # 500 invalid areas with 10 KB names each: the answer lists a few, and says so.
    areas = {"areas": ["" for _ in range(40)] + ["y" * 10_000] * 10}
    async with edge() as client:
        answer = await client.put("/vendedores/9100001/areas", json=areas, headers=AUTH)
    body = assert_error_shape(answer, 422)
    assert len(answer.content) < SMALL_ANSWER_BYTES
    assert len(body["fields"]) == MAX_FIELD_ERRORS
    assert "more)" in body["error"]
    assert "yyyyyyyyyy" not in answer.text


async def test_a_body_that_is_not_json_is_422_without_echo() -> None:
    async with edge() as client:
        answer = await client.post(
            "/bot-control",
            content=b"{not json" + b"z" * 50_000,
            headers={**AUTH, "content-type": "application/json"},
        )
    body = assert_error_shape(answer, 422)
    assert "JSON" in body["error"]
    assert "zzzzzzzz" not in answer.text


@pytest.mark.parametrize(
    ("content", "said"),
    [
        # Where it broke, as an editor counts: line and column, not a character offset.
        (
            b'{"action": "status",\n "lead_id": nope}',
            "not valid JSON (Expecting value at line 2, column 13)",
        ),
        (b"", "the body is empty"),
        (b'["status"]', "the body is not a JSON object"),
    ],
)
@pytest.mark.parametrize("path", ["/bot-control", "/send-response", "/start-proactive"])
async def test_a_body_that_is_not_a_json_object_is_explained_the_same_everywhere(
    path: str, content: bytes, said: str
) -> None:
    async with edge() as client:
        answer = await client.post(
            path, content=content, headers={**AUTH, "content-type": "application/json"}
        )
    body = assert_error_shape(answer, 422)
    assert said in body["error"]
    assert "content-type: application/json" in body["error"]
    assert body["fields"][0]["field"] == "body"
    assert not re.search(r"body\.\d", answer.text), "a character offset is not a field"


# Every route that takes a Kommo id, with where the id goes: an id outside Kommo's range
# is refused like a non-numeric one (422, naming the field), before any service is called.
ID_ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/bot-control", {"action": "pause", "lead_id": "{id}"}, "body.lead_id"),
    ("POST", "/bot-control", {"action": "status", "contact_id": "{id}"}, "body.contact_id"),
    (
        "POST",
        "/vendedor/comandos",
        {"command": "/liberar", "vendedor_id": "{id}"},
        "body.vendedor_id",
    ),
    ("POST", "/send-response", {"lead_id": "{id}", "text": "oi"}, "body.lead_id"),
    ("POST", "/start-proactive", {"lead_id": "{id}", "trigger": "form"}, "body.lead_id"),
    ("POST", "/agendamento/request", {"lead_id": "{id}", "preference": "manhã"}, "body.lead_id"),
    ("POST", "/agendamento/request", {"contact_id": "{id}", "preference": "x"}, "body.contact_id"),
    ("GET", "/conversations/active?lead_id={id}", None, "query.lead_id"),
    ("GET", "/test-kommo-lead/{id}", None, "path.lead_id"),
    ("POST", "/create-test-note/{id}", None, "path.lead_id"),
    ("GET", "/vendedor/lead/{id}", None, "path.lead_id"),
    ("GET", "/vendedor/contato/{id}", None, "path.contact_id"),
    ("PUT", "/vendedores/{id}/areas", {"areas": []}, "path.vendedor_id"),
]
BAD_IDS = [KOMMO_ID_MAX + 1, 10**23, -5]


@pytest.mark.parametrize(("method", "path", "body", "field"), ID_ROUTES)
async def test_ids_outside_kommos_range_are_refused_on_every_route(
    method: str, path: str, body: dict[str, Any] | None, field: str
) -> None:
    async with edge() as client:
        for bad in BAD_IDS:
            json_body = {k: (bad if v == "{id}" else v) for k, v in body.items()} if body else None
            answer = await client.request(
                method, path.replace("{id}", str(bad)), json=json_body, headers=AUTH
            )
            errors = assert_error_shape(answer, 422)
            assert [f["field"] for f in errors["fields"]] == [field], errors


async def test_a_429_from_a_service_says_when_to_retry() -> None:
    exhausted = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Kommo rate limit: too many requests",
        debug_error_string="",
    )
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    answer = await grpc_error_handler(request, exhausted)
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "1"
    assert answer.body == b'{"error":"Kommo rate limit: too many requests","status":429}'


async def test_metrics_are_public_by_default_and_carry_no_ids_or_secrets() -> None:
    async with edge() as client:
        # Answered at the edge (no key, an id out of range), yet counted by route.
        await client.get("/vendedor/lead/9100001")
        await client.get("/vendedor/contato/4400123")
        await client.get("/test-kommo-lead/5511987654321000000000", headers=AUTH)
        await client.post(f"/webhooks/kommo?secret={SECRET}", content=b"")
        answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert 'route="/vendedor/lead/{lead_id}"' in answer.text
    # Names, labels and help texts; not the samples' values (a duration's digits may
    # happen to spell an id).
    words = "\n".join(line.rsplit(" ", 1)[0] for line in answer.text.splitlines())
    for revealing in ("9100001", "4400123", "5511987654321", KEY, SECRET):
        assert revealing not in words


async def test_metrics_can_require_the_key_as_header_or_bearer_token() -> None:
    async with edge(edge_metrics_require_key=True) as client:
        assert_error_shape(await client.get("/metrics"), 401)
        assert_error_shape(await client.get("/metrics", headers={"X-API-Key": "wrong"}), 401)
        bearer_wrong = {"Authorization": "Bearer wrong"}
        assert_error_shape(await client.get("/metrics", headers=bearer_wrong), 401)
        assert (await client.get("/metrics", headers=AUTH)).status_code == 200
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert (await client.get("/metrics", headers=bearer)).status_code == 200
        # The rest of the public surface stays public.
        assert (await client.get("/version")).status_code == 200


_REFERENCE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_everything_from_the_edge_itself(page: str) -> None:
    async with edge() as client:
        html = await client.get(page)
        assert html.status_code == 200
        references = [a or b for a, b in _REFERENCE.findall(html.text)]
        assert len(references) >= 3, references  # script, icon, the schema (and styles)
        for url in references:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        assert "http://" not in html.text and "https://" not in html.text


async def test_the_schema_documents_the_error_shape_on_every_operation() -> None:
    async with edge() as client:
        schema = (await client.get("/openapi.json")).json()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "error",
        "status",
        "fields",
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    operations = [(p, op) for p, item in schema["paths"].items() for op in item.values()]
    assert len(operations) > 30
    for path, operation in operations:
        responses = operation["responses"]
        assert responses["default"]["content"]["application/json"]["schema"] == error, path
        if "422" in responses:
            assert responses["422"]["content"]["application/json"]["schema"] == error, path
        needs_key = any(p["name"] == "x-api-key" for p in operation.get("parameters", []))
        if needs_key and path != "/metrics":
            assert responses["401"]["content"]["application/json"]["schema"] == error, path
    webhook = schema["paths"]["/webhooks/kommo"]["post"]["responses"]
    assert webhook["400"]["content"]["application/json"]["schema"] == error
