"""GetContact names the contact's leads (`lead_ids`, Kommo's `_embedded.leads` of
`with=leads`), so a chat bound to a contact can be answered on one of them: the gateway
served over gRPC against the Kommo sandbox (in-process) and a real Redis, on the single
read and on reads coalesced into one list call; a copy cached before lead_ids still loads."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from sandbox.kommo import sandbox_of
from sandbox.kommo.runtime import Sandbox
from services.kommo_gateway.store import cache_key
from tests.integration.gateway_grpc import served_gateway
from tests.integration.sandbox_kommo import BASE, gateway_settings, sandbox_app

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

FIRST_CONTACT = 4400001
FIRST_LEAD = 9100001


@dataclass
class Gateway:
    stub: KommoGatewayAsyncStub
    sandbox: Sandbox
    http: httpx.AsyncClient

    async def second_lead_of(self, contact_id: int) -> int:
        """Kommo gets another lead for the contact (a customer's second deal)."""
        answer = await self.http.post(
            f"{BASE}/_sandbox/lead-event", json={"kind": "add", "contact_id": contact_id}
        )
        assert answer.status_code == 200, answer.text
        return int(answer.json()["lead_id"])

    def contact_reads(self) -> list[dict[str, list[str]]]:
        """The query of every contact read that reached Kommo."""
        return [
            urllib.parse.parse_qs(r.query)
            for r in self.sandbox.traffic.since(0)
            if r.method == "GET" and r.path.startswith("/api/v4/contacts")
        ]


@pytest.fixture
async def gateway(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Gateway]:
    app = sandbox_app()
    # No retries: with Kommo down, a read fails at once (and a stale copy answers).
    settings = gateway_settings(redis_url, 50).model_copy(update={"kommo_max_retries": 0})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    try:
        async with served_gateway(settings, redis, http) as stub:
            yield Gateway(stub, sandbox_of(app), http)
    finally:
        await http.aclose()
        await sandbox_of(app).aclose()


async def get_contact(gateway: Gateway, contact_id: int) -> gw.Contact:
    return await gateway.stub.GetContact(gw.GetContactRequest(contact_id=contact_id))


async def test_get_contact_names_its_leads_read_with_leads(gateway: Gateway) -> None:
    contact = await get_contact(gateway, FIRST_CONTACT)
    assert contact.id == FIRST_CONTACT and contact.phones
    assert list(contact.lead_ids) == [FIRST_LEAD]
    reads = gateway.contact_reads()
    assert reads and all(read.get("with") == ["leads"] for read in reads)


async def test_a_contact_with_two_leads_names_both(gateway: Gateway) -> None:
    second = await gateway.second_lead_of(FIRST_CONTACT)
    contact = await get_contact(gateway, FIRST_CONTACT)
    assert list(contact.lead_ids) == [FIRST_LEAD, second]


async def test_concurrent_contact_reads_share_a_list_call_and_each_has_its_own_leads(
    gateway: Gateway,
) -> None:
    ids = [FIRST_CONTACT + n for n in range(10)]
    contacts = await asyncio.gather(*(get_contact(gateway, i) for i in ids))
    assert {c.id: list(c.lead_ids) for c in contacts} == {
        FIRST_CONTACT + n: [FIRST_LEAD + n] for n in range(10)
    }
    assert len(gateway.contact_reads()) < len(ids)  # coalesced: filter[id][]=…&with=leads


async def test_the_cached_copy_keeps_the_leads(gateway: Gateway, redis: aioredis.Redis) -> None:
    await get_contact(gateway, FIRST_CONTACT)
    gateway.sandbox.faults.down = True
    contact = await get_contact(gateway, FIRST_CONTACT)  # fresh copy: Kommo not asked
    assert list(contact.lead_ids) == [FIRST_LEAD]
    raw = await redis.get(cache_key("contact", FIRST_CONTACT))
    assert raw is not None
    cached = json.loads(raw)
    cached["at"] = time.time() - 3600  # stale: Kommo is asked, fails, the copy answers
    await redis.set(cache_key("contact", FIRST_CONTACT), json.dumps(cached))
    contact = await get_contact(gateway, FIRST_CONTACT)
    assert list(contact.lead_ids) == [FIRST_LEAD]


async def _cache_without_leads(redis: aioredis.Redis, at: float) -> None:
    """A copy as gateways before lead_ids cached it: read without `with=leads`."""
    body = {
        "id": FIRST_CONTACT,
        "name": "Antes",
        "responsible_user_id": 10000002,
        "custom_fields_values": [
            {"field_id": 1, "field_code": "PHONE", "values": [{"value": "+5511987654321"}]}
        ],
        "_embedded": {"tags": [], "companies": []},
    }
    await redis.set(cache_key("contact", FIRST_CONTACT), json.dumps({"at": at, "body": body}))


async def test_a_copy_cached_without_leads_still_answers_when_kommo_is_down(
    gateway: Gateway, redis: aioredis.Redis
) -> None:
    await _cache_without_leads(redis, time.time() - 3600)
    gateway.sandbox.faults.down = True
    contact = await get_contact(gateway, FIRST_CONTACT)
    assert contact.name == "Antes" and list(contact.phones) == ["+5511987654321"]
    assert list(contact.lead_ids) == []


async def test_a_fresh_copy_cached_without_leads_is_read_again(
    gateway: Gateway, redis: aioredis.Redis
) -> None:
    await _cache_without_leads(redis, time.time())
    contact = await get_contact(gateway, FIRST_CONTACT)
    assert list(contact.lead_ids) == [FIRST_LEAD]
    assert len(gateway.contact_reads()) == 1
    # and the copy now kept has them: the next read does not ask Kommo.
    assert list((await get_contact(gateway, FIRST_CONTACT)).lead_ids) == [FIRST_LEAD]
    assert len(gateway.contact_reads()) == 1
