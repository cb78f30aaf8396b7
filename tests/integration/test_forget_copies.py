"""ForgetCopies drops the gateway's Redis copies of the leads and contacts Kommo changed, so
the next read asks Kommo instead of serving the old copy until KOMMO_CACHE_TTL_SECONDS runs
out: the gateway served over gRPC against the Kommo sandbox (in-process) and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from sandbox.kommo import sandbox_of
from sandbox.kommo.runtime import Sandbox
from services.common.kommo_ids import KOMMO_ID_MAX
from services.kommo_gateway.store import cache_key
from tests.integration.gateway_grpc import served_gateway
from tests.integration.sandbox_kommo import gateway_settings, sandbox_app

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

LEAD = 9100001
CONTACT = 4400001
OTHER_LEAD = 9100002
NEW_VENDEDOR = 10000005
# Far beyond any test: only a dropped copy makes the gateway ask Kommo again.
CACHE_TTL_SECONDS = 3600.0


@pytest.fixture
async def gateway(
    redis: aioredis.Redis, redis_url: str
) -> AsyncIterator[tuple[KommoGatewayAsyncStub, Sandbox]]:
    app = sandbox_app()
    settings = gateway_settings(redis_url, 50).model_copy(
        update={"kommo_cache_ttl_seconds": CACHE_TTL_SECONDS}
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    try:
        async with served_gateway(settings, redis, http) as stub:
            yield stub, sandbox_of(app)
    finally:
        await http.aclose()
        await sandbox_of(app).aclose()


def kommo_reads(sandbox: Sandbox, path: str) -> int:
    return sum(1 for r in sandbox.traffic.since(0) if r.method == "GET" and r.path.startswith(path))


async def test_a_forgotten_copy_is_read_again_from_kommo_and_shows_the_change(
    gateway: tuple[KommoGatewayAsyncStub, Sandbox], redis: aioredis.Redis
) -> None:
    stub, sandbox = gateway
    before = await stub.GetLead(gw.GetLeadRequest(lead_id=LEAD))
    await stub.GetLead(gw.GetLeadRequest(lead_id=OTHER_LEAD))
    await stub.GetContact(gw.GetContactRequest(contact_id=CONTACT))
    assert before.responsible_user_id != NEW_VENDEDOR
    sandbox.state.leads[LEAD].responsible_user_id = NEW_VENDEDOR  # changed in Kommo
    cached = await stub.GetLead(gw.GetLeadRequest(lead_id=LEAD))
    assert cached.responsible_user_id == before.responsible_user_id  # the copy answers
    lead_reads = kommo_reads(sandbox, "/api/v4/leads")

    answer = await stub.ForgetCopies(gw.ForgetCopiesRequest(lead_ids=[LEAD], contact_ids=[CONTACT]))

    assert answer.forgotten == 2
    assert not await redis.exists(cache_key("lead", LEAD), cache_key("contact", CONTACT))
    assert await redis.exists(cache_key("lead", OTHER_LEAD))  # only what was named goes
    fresh = await stub.GetLead(gw.GetLeadRequest(lead_id=LEAD))
    assert fresh.responsible_user_id == NEW_VENDEDOR
    assert kommo_reads(sandbox, "/api/v4/leads") == lead_reads + 1


async def test_forgetting_is_idempotent_and_needs_no_copy(
    gateway: tuple[KommoGatewayAsyncStub, Sandbox],
) -> None:
    stub, _ = gateway
    request = gw.ForgetCopiesRequest(lead_ids=[LEAD, LEAD], contact_ids=[CONTACT])
    assert (await stub.ForgetCopies(request)).forgotten == 0
    assert (await stub.ForgetCopies(gw.ForgetCopiesRequest())).forgotten == 0


@pytest.mark.parametrize(
    "request_",
    [
        gw.ForgetCopiesRequest(lead_ids=[LEAD, 0]),
        gw.ForgetCopiesRequest(contact_ids=[-CONTACT]),
        gw.ForgetCopiesRequest(lead_ids=[KOMMO_ID_MAX + 1]),
    ],
)
async def test_an_id_outside_kommos_range_is_refused_and_nothing_is_dropped(
    gateway: tuple[KommoGatewayAsyncStub, Sandbox],
    redis: aioredis.Redis,
    request_: gw.ForgetCopiesRequest,
) -> None:
    stub, _ = gateway
    await stub.GetLead(gw.GetLeadRequest(lead_id=LEAD))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ForgetCopies(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Kommo ids" in (refused.value.details() or "")
    assert await redis.exists(cache_key("lead", LEAD))
