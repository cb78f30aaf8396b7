"""DeliverMessage with a template: the lead fields that feed its markers are written (the
reply field is not), then the named Salesbot, whose Message step holds the approved
WhatsApp template, is run on the lead — once per idempotency key, on the lead's reply
slot, a run of unknown outcome settled by the lead's events, never the Chats API. A text
may carry lead fields too, in the reply field's PATCH. Bad requests are refused before
Kommo is asked. And ListTemplates reads the sandbox's own templates API.

The gateway over gRPC on a real Redis, against the Kommo sandbox in-process; every
request that reaches it is recorded with its body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from sandbox.kommo import sandbox_of
from sandbox.kommo.config import (
    DEFAULT_TEMPLATES,
    SCHEDULE_FIELD_ID,
    SELLER_NAME_FIELD_ID,
    TEMPLATE_FORM_WELCOME_BOT,
    TEMPLATE_IN_REVIEW_ID,
    TEMPLATE_REOPEN_BOT,
    TEMPLATE_REOPEN_ID,
)
from sandbox.kommo.runtime import Sandbox
from sandbox.kommo.traffic import FailRule
from services.kommo_gateway.settings import GatewaySettings
from tests.integration.gateway_grpc import served_gateway
from tests.integration.sandbox_kommo import BASE, CONFIG, gateway_settings, sandbox_app

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

FIRST_LEAD = 9100001
LEADS_PATCH = "/api/v4/leads"
BOT_RUN = "/api/v4/bots/run"
CHATS_API = f"/v2/origin/custom/{CONFIG.scope_id}"


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    body: Any


class Recording(httpx.AsyncBaseTransport):
    """Passes every request on, keeping its method, path and JSON body."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.sent: list[Sent] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.content
        body = json.loads(raw) if raw and raw.lstrip()[:1] in (b"[", b"{") else None
        self.sent.append(Sent(request.method, request.url.path, body))
        return await self._inner.handle_async_request(request)


@dataclass
class Gateway:
    stub: KommoGatewayAsyncStub
    sandbox: Sandbox
    recording: Recording

    async def deliver(self, **fields: Any) -> gw.DeliverMessageResponse:
        return await self.stub.DeliverMessage(gw.DeliverMessageRequest(**fields))

    def sent(self, method: str, path: str) -> list[Any]:
        return [s.body for s in self.recording.sent if s.method == method and s.path == path]

    def field(self, lead_id: int, field_id: int) -> str:
        return str(self.sandbox.state.leads[lead_id].field_text(field_id))

    async def outgoing(self, lead_id: int, count: int) -> list[Any]:
        """The lead's outgoing chat messages, once there are `count` (the bot runs
        a moment after it is started), and a moment more to see that no other comes."""
        for _ in range(200):
            messages = [
                m for m in self.sandbox.state.chats.get(lead_id, []) if m.direction == "outgoing"
            ]
            if len(messages) >= count:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        return [m for m in self.sandbox.state.chats.get(lead_id, []) if m.direction == "outgoing"]


def _fast(settings: GatewaySettings) -> GatewaySettings:
    # The sandbox's bot sends 0.03 s after its run: a short grace period before the
    # evidence is read, and the spacing above the skew allowance plus a second.
    return settings.model_copy(
        update={
            "kommo_delivery_grace_seconds": 0.5,
            "kommo_reply_spacing_seconds": 2.5,
            "kommo_evidence_skew_seconds": 1.0,
            "kommo_max_retries": 0,
        }
    )


@asynccontextmanager
async def _gateway(
    redis: aioredis.Redis,
    redis_url: str,
    change: Callable[[GatewaySettings], GatewaySettings] = lambda s: s,
) -> AsyncIterator[Gateway]:
    app = sandbox_app()
    recording = Recording(httpx.ASGITransport(app=app))
    settings = change(_fast(gateway_settings(redis_url, 50)))
    try:
        async with (
            httpx.AsyncClient(transport=recording) as http,
            served_gateway(settings, redis, http) as stub,
        ):
            yield Gateway(stub, sandbox_of(app), recording)
    finally:
        await sandbox_of(app).aclose()


@pytest.fixture
async def gateway(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Gateway]:
    async with _gateway(redis, redis_url) as running:
        yield running


def _patch_of(lead_id: int, *values: tuple[int, str]) -> list[dict[str, Any]]:
    return [
        {
            "id": lead_id,
            "custom_fields_values": [
                {"field_id": field_id, "values": [{"value": value}]} for field_id, value in values
            ],
        }
    ]


def _run_of(bot_id: int, lead_id: int) -> list[dict[str, Any]]:
    return [{"bot_id": bot_id, "entity_id": lead_id, "entity_type": "leads"}]


async def test_a_template_writes_only_its_lead_fields_then_runs_its_bot_once(
    gateway: Gateway,
) -> None:
    lead = FIRST_LEAD
    reply_before = gateway.field(lead, CONFIG.reply_field_id)
    answer = await gateway.deliver(
        lead_id=lead,
        idempotency_key="template-welcome",
        template=True,
        salesbot_id=TEMPLATE_FORM_WELCOME_BOT,
        lead_fields={SELLER_NAME_FIELD_ID: "Ana Souza"},
    )
    assert (answer.status, answer.method) == ("sent", "salesbot")
    assert gateway.sent("PATCH", LEADS_PATCH) == [
        _patch_of(lead, (SELLER_NAME_FIELD_ID, "Ana Souza"))
    ]
    assert gateway.sent("POST", BOT_RUN) == [_run_of(TEMPLATE_FORM_WELCOME_BOT, lead)]
    assert gateway.field(lead, CONFIG.reply_field_id) == reply_before
    (message,) = await gateway.outgoing(lead, 1)
    assert "Ana Souza" in message.text  # the template's marker, filled when the bot ran
    again = await gateway.deliver(
        lead_id=lead,
        idempotency_key="template-welcome",
        template=True,
        salesbot_id=TEMPLATE_FORM_WELCOME_BOT,
        lead_fields={SELLER_NAME_FIELD_ID: "Ana Souza"},
    )
    assert (again.status, again.method) == ("already_sent", "salesbot")
    assert len(gateway.sent("POST", BOT_RUN)) == 1 and len(gateway.sent("PATCH", LEADS_PATCH)) == 1


async def test_a_template_without_lead_fields_only_runs_its_bot(gateway: Gateway) -> None:
    lead = FIRST_LEAD + 1
    answer = await gateway.deliver(
        lead_id=lead,
        text="ignored: the template is the bot's",
        idempotency_key="template-reopen",
        template=True,
        salesbot_id=TEMPLATE_REOPEN_BOT,
    )
    assert answer.status == "sent"
    assert gateway.sent("PATCH", LEADS_PATCH) == []
    assert gateway.sent("POST", BOT_RUN) == [_run_of(TEMPLATE_REOPEN_BOT, lead)]
    assert len(await gateway.outgoing(lead, 1)) == 1


async def test_a_text_writes_its_lead_fields_in_the_reply_fields_patch(gateway: Gateway) -> None:
    lead = FIRST_LEAD + 2
    answer = await gateway.deliver(
        lead_id=lead,
        text="Seu horário está confirmado.",
        idempotency_key="text-with-fields",
        lead_fields={SCHEDULE_FIELD_ID: "terça, 10h"},
    )
    assert (answer.status, answer.method) == ("sent", "salesbot")
    assert gateway.sent("PATCH", LEADS_PATCH) == [
        _patch_of(
            lead,
            (CONFIG.reply_field_id, "Seu horário está confirmado."),
            (SCHEDULE_FIELD_ID, "terça, 10h"),
        )
    ]
    assert gateway.sent("POST", BOT_RUN) == [_run_of(CONFIG.salesbot_id, lead)]
    assert gateway.field(lead, SCHEDULE_FIELD_ID) == "terça, 10h"
    (message,) = await gateway.outgoing(lead, 1)
    assert message.text == "Seu horário está confirmado."


async def test_a_template_goes_by_its_salesbot_even_when_texts_use_the_chats_api(
    redis: aioredis.Redis, redis_url: str
) -> None:
    chats_api = {
        "kommo_channel_id": "sandbox-channel",
        "kommo_channel_secret": CONFIG.channel_secret,
        "kommo_scope_id": CONFIG.scope_id,
        "kommo_amojo_base_url": BASE,
    }
    async with _gateway(redis, redis_url, lambda s: s.model_copy(update=chats_api)) as gateway:
        lead = FIRST_LEAD + 3
        text = await gateway.deliver(lead_id=lead, text="Olá!", idempotency_key="chats-api-text")
        assert text.method == "chats_api" and len(gateway.sent("POST", CHATS_API)) == 1
        template = await gateway.deliver(
            lead_id=lead,
            idempotency_key="chats-api-template",
            template=True,
            salesbot_id=TEMPLATE_FORM_WELCOME_BOT,
            lead_fields={SELLER_NAME_FIELD_ID: "Bruno"},
        )
        assert (template.status, template.method) == ("sent", "salesbot")
        assert len(gateway.sent("POST", CHATS_API)) == 1  # still only the text
        assert gateway.sent("PATCH", LEADS_PATCH) == [
            _patch_of(lead, (SELLER_NAME_FIELD_ID, "Bruno"))
        ]
        assert gateway.sent("POST", BOT_RUN) == [_run_of(TEMPLATE_FORM_WELCOME_BOT, lead)]


@pytest.mark.parametrize("sent_anyway", [True, False], ids=["sent-anyway", "not-sent"])
async def test_a_template_run_of_unknown_outcome_goes_out_once(
    gateway: Gateway, sent_anyway: bool
) -> None:
    """Kommo answers the run 502: when the bot ran all the same, its message on the lead
    is the evidence and the bot is not run again; when it did not, it is run again."""
    lead = FIRST_LEAD + 4
    gateway.sandbox.faults.fail_next.append(
        FailRule(
            BOT_RUN,
            502,
            1,
            apply_effect=sent_anyway,
            method="POST",
            await_effect=sent_anyway,
        )
    )
    answer = await gateway.deliver(
        lead_id=lead,
        idempotency_key=f"template-unknown-{sent_anyway}",
        template=True,
        salesbot_id=TEMPLATE_FORM_WELCOME_BOT,
        lead_fields={SELLER_NAME_FIELD_ID: "Carla"},
    )
    assert answer.status == "sent"
    runs = gateway.sent("POST", BOT_RUN)
    assert runs == [_run_of(TEMPLATE_FORM_WELCOME_BOT, lead)] * (1 if sent_anyway else 2)
    messages = await gateway.outgoing(lead, 1)
    assert len(messages) == 1 and "Carla" in messages[0].text
    # Never the reply field: written only with the lead fields, once per run.
    patches = gateway.sent("PATCH", LEADS_PATCH)
    assert patches == [_patch_of(lead, (SELLER_NAME_FIELD_ID, "Carla"))] * len(runs)


_MANY = {SELLER_NAME_FIELD_ID + n: "x" for n in range(21)}


@pytest.mark.parametrize(
    ("request_fields", "says"),
    [
        ({"template": True}, "needs salesbot_id"),
        ({"template": True, "salesbot_id": -3}, "salesbot_id must be a Kommo id"),
        ({"template": True, "salesbot_id": TEMPLATE_REOPEN_BOT, "lead_id": 0}, "lead_id"),
        ({"text": "oi", "lead_fields": _MANY}, "at most 20 lead_fields"),
        ({"text": "oi", "lead_fields": {0: "x"}}, "0 is not a field id"),
        ({"text": "oi", "lead_fields": {-7: "x"}}, "-7 is not a field id"),
        (
            {"text": "oi", "lead_fields": {SELLER_NAME_FIELD_ID: "x" * 4097}},
            "4097 characters, at most 4096",
        ),
        ({"text": "oi", "lead_fields": {CONFIG.reply_field_id: "x"}}, "is the reply field"),
        ({"text": " "}, "text is empty"),
    ],
)
async def test_a_bad_request_is_refused_before_kommo_is_asked(
    gateway: Gateway, request_fields: dict[str, Any], says: str
) -> None:
    fields: dict[str, Any] = {"lead_id": FIRST_LEAD + 5, "idempotency_key": "refused"}
    fields |= request_fields
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.deliver(**fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (refused.value.details() or "")
    assert gateway.sent("PATCH", LEADS_PATCH) == [] and gateway.sent("POST", BOT_RUN) == []


async def test_list_templates_reads_the_sandboxs_templates_with_their_review(
    gateway: Gateway,
) -> None:
    answer = await gateway.stub.ListTemplates(gw.ListTemplatesRequest())
    by_id = {t.id: t for t in answer.templates}
    assert set(by_id) == {seed.id for seed in DEFAULT_TEMPLATES}
    for seed in DEFAULT_TEMPLATES:
        got = by_id[seed.id]
        assert (got.name, got.content, got.review_status, got.type) == (
            seed.name,
            seed.content,
            seed.review_status,
            "waba",
        )
    assert by_id[TEMPLATE_REOPEN_ID].review_status == "approved"
    assert by_id[TEMPLATE_IN_REVIEW_ID].review_status == "review"
    reads = [s for s in gateway.recording.sent if s.path == "/api/v4/chats/templates"]
    assert len(reads) == 1


async def test_last_customer_message_comes_from_kommos_incoming_message_events(
    gateway: Gateway,
) -> None:
    """A lead the bridge has not seen write: Kommo's events say when its customer did."""
    state = gateway.sandbox.state
    lead = state.leads[FIRST_LEAD]
    seeded = lead.customer_last_wrote_at
    assert seeded is not None
    answer = await gateway.stub.GetLastCustomerMessage(
        gw.GetLastCustomerMessageRequest(lead_id=FIRST_LEAD)
    )
    assert answer.found and answer.at == int(seeded) and answer.origin == "waba"

    lead.chat_origin = "telegram"
    state.customer_wrote_at(lead, seeded + 60)
    answer = await gateway.stub.GetLastCustomerMessage(
        gw.GetLastCustomerMessageRequest(lead_id=FIRST_LEAD)
    )
    assert answer.at == int(seeded + 60) and answer.origin == "telegram"

    state.customer_wrote_at(lead, None)
    never = await gateway.stub.GetLastCustomerMessage(
        gw.GetLastCustomerMessageRequest(lead_id=FIRST_LEAD)
    )
    assert not never.found
    reads = [s for s in gateway.recording.sent if s.path == "/api/v4/events"]
    assert len(reads) == 3


async def test_a_delivery_whose_field_write_failed_runs_its_bot_at_once_when_asked_again(
    gateway: Gateway,
) -> None:
    """The begin records a run of unknown outcome as it takes the lead's slot (issue 22:
    one call fewer a reply). When the field write fails, no bot ran: that record goes, so
    the next attempt runs the bot without waiting its grace period for evidence."""
    gateway.sandbox.faults.fail_next.append(FailRule(LEADS_PATCH, 503, 1, method="PATCH"))
    ask = {"lead_id": FIRST_LEAD, "text": "Depois da falha.", "idempotency_key": "k-patch"}
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.deliver(**ask)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gateway.sent("POST", BOT_RUN) == []
    await asyncio.sleep(2.6)  # the lead's slot waits the spacing after a failed attempt
    again = await gateway.deliver(**ask)
    assert again.status == "sent"
    assert gateway.sent("GET", "/api/v4/events") == [], "no evidence looked for: no bot ran"
    assert [m.text for m in await gateway.outgoing(FIRST_LEAD, 1)] == ["Depois da falha."]
