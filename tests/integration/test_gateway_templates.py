"""ListTemplates: the integration's chat templates with their WhatsApp review status, read
from Kommo's `GET /api/v4/chats/templates?with=reviews` (every page of at most 50; 204 for
none), kept in the replica for KOMMO_TEMPLATES_CACHE_SECONDS, the copy served when Kommo
is down, and an empty list (not an error) when Kommo refuses the list (402/403/404).

The gateway is served over gRPC on a real Redis; Kommo is a small fake HTTP server on a
free port answering Kommo's HAL shape."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from devstack.processes import free_port
from services.kommo_gateway import mapping
from services.kommo_gateway.settings import GatewaySettings
from tests.integration.gateway_grpc import served_gateway

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

TOKEN = "fake-long-lived-token"  # a test double's
TEMPLATES_PATH = "/api/v4/chats/templates"
PAGE = 50
REVIEWS = ("approved", "review", "paused", "rejected")


def _template(n: int) -> dict[str, Any]:
    """Kommo's shape; every fifth one is Kommo's own kind (no WhatsApp review)."""
    body: dict[str, Any] = {
        "id": 1000 + n,
        "account_id": 30000001,
        "name": f"modelo_{n}",
        "content": f"Olá {{{{contact.name}}}}, mensagem {n}",
        "is_editable": False,
        "created_at": 1700000000,
        "updated_at": 1700000000,
        "_links": {"self": {"href": f"/api/v4/chats/templates/{1000 + n}"}},
    }
    if n % 5 == 4:
        body["type"] = "amocrm"
    else:
        body |= {"type": "waba", "waba_category": "UTILITY", "review_status": REVIEWS[n % 4]}
    return body


@dataclass
class FakeKommo:
    """Kommo's templates list, paged as Kommo pages it; `status` answers every call with
    that error instead; `next_links` False leaves `_links.next` out."""

    templates: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    next_links: bool = True
    # What a page past the last answers: Kommo's 204, or an error some servers give.
    past_end: int = 204
    queries: list[dict[str, str]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization") == f"Bearer {TOKEN}"
        query = dict(request.query)
        self.queries.append(query)
        if self.status >= 500:
            return web.Response(status=self.status, text="Bad Gateway")
        if self.status != 200:
            return web.json_response(
                {"title": "Forbidden", "status": self.status, "detail": "not for this account"},
                status=self.status,
                content_type="application/problem+json",
            )
        page, limit = int(query.get("page", "1")), int(query.get("limit", "50"))
        if limit > PAGE:
            return web.json_response(
                {"title": "Bad Request", "status": 400, "detail": "limit is at most 50"},
                status=400,
                content_type="application/problem+json",
            )
        chunk = self.templates[(page - 1) * limit : page * limit]
        if not chunk:
            if self.past_end != 204 and page > 1:
                return web.json_response(
                    {"title": "Not Found", "status": self.past_end},
                    status=self.past_end,
                    content_type="application/problem+json",
                )
            return web.Response(status=204)
        links: dict[str, Any] = {"self": {"href": f"{self.base}{TEMPLATES_PATH}?page={page}"}}
        if self.next_links and page * limit < len(self.templates):
            links["next"] = {"href": f"{self.base}{TEMPLATES_PATH}?page={page + 1}"}
        return web.json_response(
            {"_page": page, "_links": links, "_embedded": {"chat_templates": chunk}},
            content_type="application/hal+json",
        )

    def pages_read(self) -> list[str]:
        return [q.get("page", "") for q in self.queries]


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    fake = FakeKommo()
    app = web.Application()
    app.router.add_get(TEMPLATES_PATH, fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.base = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _settings(redis_url: str, base: str, cache_seconds: float = 60.0) -> GatewaySettings:
    return GatewaySettings(
        redis_url=redis_url,
        kommo_base_url=base,
        kommo_sandbox=True,
        kommo_long_lived_token=TOKEN,
        kommo_salesbot_id=7001,
        kommo_reply_field_id=900001,
        kommo_rate_limit_rps=50,
        # Kommo down fails at once (no retries), so the copy answers without waiting.
        kommo_max_retries=0,
        kommo_templates_cache_seconds=cache_seconds,
    )


@dataclass
class Gateway:
    stub: KommoGatewayAsyncStub
    kommo: FakeKommo

    async def templates(self, fresh: bool = False) -> gw.Templates:
        return await self.stub.ListTemplates(gw.ListTemplatesRequest(fresh=fresh))


@asynccontextmanager
async def _gateway(
    kommo: FakeKommo, redis: aioredis.Redis, redis_url: str, cache_seconds: float = 60.0
) -> AsyncIterator[Gateway]:
    async with (
        httpx.AsyncClient() as http,
        served_gateway(_settings(redis_url, kommo.base, cache_seconds), redis, http) as stub,
    ):
        yield Gateway(stub, kommo)


@pytest.fixture
async def gateway(
    kommo: FakeKommo, redis: aioredis.Redis, redis_url: str
) -> AsyncIterator[Gateway]:
    async with _gateway(kommo, redis, redis_url) as running:
        yield running


async def test_every_page_is_read_with_reviews_and_each_template_keeps_its_status(
    gateway: Gateway,
) -> None:
    gateway.kommo.templates = [_template(n) for n in range(120)]
    before = time.time()
    answer = await gateway.templates()
    assert gateway.kommo.queries == [
        {"with": "reviews", "limit": "50", "page": str(page)} for page in (1, 2, 3)
    ]
    assert [t.id for t in answer.templates] == [1000 + n for n in range(120)]
    first, own = answer.templates[1], answer.templates[4]
    assert (first.name, first.content, first.type, first.review_status) == (
        "modelo_1",
        "Olá {{contact.name}}, mensagem 1",
        "waba",
        "review",
    )
    assert (own.type, own.review_status) == ("amocrm", "")
    statuses = {t.review_status for t in answer.templates if t.type == "waba"}
    assert statuses == set(REVIEWS)
    assert before <= answer.fetched_at <= time.time()


async def test_pages_are_read_until_one_is_short_when_kommo_links_no_next(
    gateway: Gateway,
) -> None:
    gateway.kommo.next_links = False
    gateway.kommo.templates = [_template(n) for n in range(100)]
    answer = await gateway.templates()
    assert len(answer.templates) == 100
    # Two full pages, then the third answers 204: the end.
    assert gateway.kommo.pages_read() == ["1", "2", "3"]


async def test_a_page_past_the_last_answering_404_ends_the_list(gateway: Gateway) -> None:
    gateway.kommo.next_links = False
    gateway.kommo.past_end = 404
    gateway.kommo.templates = [_template(n) for n in range(50)]
    answer = await gateway.templates()
    assert len(answer.templates) == 50
    assert gateway.kommo.pages_read() == ["1", "2"]


async def test_no_templates_is_kommos_204_and_an_empty_list(gateway: Gateway) -> None:
    answer = await gateway.templates()
    assert list(answer.templates) == [] and answer.fetched_at > 0
    assert gateway.kommo.pages_read() == ["1"]


async def test_the_copy_answers_within_the_cache_period_and_fresh_asks_kommo(
    gateway: Gateway,
) -> None:
    gateway.kommo.templates = [_template(0)]
    first = await gateway.templates()
    gateway.kommo.templates = [_template(0) | {"review_status": "paused"}]
    again = await gateway.templates()
    assert len(gateway.kommo.queries) == 1
    assert again.templates[0].review_status == "approved"
    assert again.fetched_at == first.fetched_at
    fresh = await gateway.templates(fresh=True)
    assert len(gateway.kommo.queries) == 2
    assert fresh.templates[0].review_status == "paused" and fresh.fetched_at > first.fetched_at
    # and the fresh answer is the copy from now on
    assert (await gateway.templates()).templates[0].review_status == "paused"
    assert len(gateway.kommo.queries) == 2


async def test_kommo_is_asked_again_after_the_cache_period(
    kommo: FakeKommo, redis: aioredis.Redis, redis_url: str
) -> None:
    async with _gateway(kommo, redis, redis_url, cache_seconds=0.3) as gateway:
        kommo.templates = [_template(0)]
        await gateway.templates()
        await gateway.templates()
        assert len(kommo.queries) == 1
        await asyncio.sleep(0.4)
        kommo.templates = [_template(0) | {"review_status": "rejected"}]
        assert (await gateway.templates()).templates[0].review_status == "rejected"
        assert len(kommo.queries) == 2


async def test_callers_asking_together_share_one_read(gateway: Gateway) -> None:
    gateway.kommo.templates = [_template(n) for n in range(60)]
    answers = await asyncio.gather(*(gateway.templates() for _ in range(8)))
    assert all(len(a.templates) == 60 for a in answers)
    assert gateway.kommo.pages_read() == ["1", "2"]


async def test_kommo_down_answers_the_copy_or_unavailable_without_one(
    kommo: FakeKommo, redis: aioredis.Redis, redis_url: str
) -> None:
    async with _gateway(kommo, redis, redis_url, cache_seconds=0.2) as gateway:
        kommo.status = 502
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gateway.templates()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        kommo.status = 200
        kommo.templates = [_template(0), _template(1)]
        copy = await gateway.templates()
        kommo.status = 502
        await asyncio.sleep(0.3)  # the copy is past its period: Kommo is asked and fails
        stale = await gateway.templates()
        assert [t.id for t in stale.templates] == [1000, 1001]
        assert stale.fetched_at == copy.fetched_at
        asked = len(kommo.queries)
        fresh = await gateway.templates(fresh=True)  # fresh too: the copy beats no answer
        assert [t.id for t in fresh.templates] == [1000, 1001]
        assert len(kommo.queries) == asked + 1


@pytest.mark.parametrize("status", [402, 403, 404])
async def test_an_account_without_templates_gets_an_empty_list_and_one_log_line(
    gateway: Gateway, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.kommo.status = status
    with caplog.at_level(logging.WARNING, logger="services.kommo_gateway.templates"):
        first = await gateway.templates()
        again = await gateway.templates()  # within the period: Kommo is not asked again
        fresh = await gateway.templates(fresh=True)
    assert list(first.templates) == list(again.templates) == list(fresh.templates) == []
    assert first.fetched_at > 0
    assert len(gateway.kommo.queries) == 2
    refusals = [r for r in caplog.records if "refuses the list" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert str(status) in refusals[0].getMessage()
    # Kommo lists them again once the account has them.
    gateway.kommo.status = 200
    gateway.kommo.templates = [_template(0)]
    assert [t.id for t in (await gateway.templates(fresh=True)).templates] == [1000]


def test_a_list_of_reviews_gives_the_worst_status() -> None:
    # The shape of `with=reviews` is not confirmed: a list of reviews (one per WhatsApp
    # number) is read too, and a template is approved only when every review is.
    both = {"reviews": [{"status": "approved"}, {"status": "rejected"}]}
    assert mapping.review_status(both) == "rejected"
    embedded = {"_embedded": {"reviews": [{"status": "approved"}, {"status": "approved"}]}}
    assert mapping.review_status(embedded) == "approved"
    assert mapping.review_status({"review_status": "paused", "reviews": []}) == "paused"
    assert mapping.review_status({"type": "amocrm"}) == ""
