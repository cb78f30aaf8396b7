"""The gateway's own record of a delivered message: DeliverMessage asked again with the same
idempotency key (the conversation service retrying after a lost answer) is "already_sent",
and nothing goes to Kommo again. Through the Chats API nothing else would stop it: unlike
a Salesbot run, whose second try first looks for the bot's message in the lead's events,
a Chats API send is simply sent again.

The gateway over gRPC on a real Redis, against the Kommo sandbox in-process."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from sandbox.kommo import sandbox_of
from services.conversation.stages import delivery_streams
from tests.integration.gateway_grpc import served_gateway
from tests.integration.sandbox_kommo import CONFIG, Counting, chats_api_settings, sandbox_app

CHATS_API = f"/v2/origin/custom/{CONFIG.scope_id}"
LEAD = 9100001


async def test_a_chats_api_reply_asked_twice_with_one_key_is_sent_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    app = sandbox_app()
    counting = Counting(httpx.ASGITransport(app=app))
    settings = chats_api_settings(redis_url)
    sandbox = sandbox_of(app)
    try:
        async with (
            httpx.AsyncClient(transport=counting) as http,
            served_gateway(settings, redis, http) as stub,
        ):
            ask = gw.DeliverMessageRequest(lead_id=LEAD, text="Uma vez só.", idempotency_key="k1")
            first = await stub.DeliverMessage(ask)
            assert (first.status, first.method) == ("sent", "chats_api")
            again = await stub.DeliverMessage(ask)
            assert (again.status, again.method) == ("already_sent", "chats_api")
            await sandbox.activity.drain()  # the sandbox's delivery to the chat, done
            await asyncio.sleep(0.1)
    finally:
        await sandbox.aclose()
    assert counting.paths.count(CHATS_API) == 1, counting.paths
    outgoing = [m.text for m in sandbox.state.chats.get(LEAD, []) if m.direction == "outgoing"]
    assert outgoing.count("Uma vez só.") == 1


async def test_over_the_stream_a_delivery_ends_as_the_unary_call_would(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """DeliverMessages, as the conversation service sends replies: the same key twice
    goes once; a request the gateway refuses ends with its code and message."""
    app = sandbox_app()
    counting = Counting(httpx.ASGITransport(app=app))
    settings = chats_api_settings(redis_url)
    sandbox = sandbox_of(app)
    try:
        async with (
            httpx.AsyncClient(transport=counting) as http,
            served_gateway(settings, redis, http) as stub,
        ):
            deliveries = delivery_streams(stub, lanes=2)
            ask = gw.DeliverMessageRequest(lead_id=LEAD, text="Pelo stream.", idempotency_key="s1")
            first, again = await asyncio.gather(
                deliveries.send(ask, 10), deliveries.send(ask, 10), return_exceptions=True
            )
            outcomes = sorted(
                a.status if isinstance(a, gw.DeliverMessageResponse) else type(a).__name__
                for a in (first, again)
            )
            # Side by side, the second finds the first attempt under way (UNAVAILABLE:
            # asked again, it is "already_sent"), or after it "already_sent".
            assert outcomes in (["AioRpcError", "sent"], ["already_sent", "sent"]), outcomes
            assert (await deliveries.send(ask, 10)).status == "already_sent"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await deliveries.send(gw.DeliverMessageRequest(lead_id=LEAD, text="x"), 10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "idempotency_key is required" in (refused.value.details() or "")
            deliveries.close()
            await sandbox.activity.drain()
            await asyncio.sleep(0.1)
    finally:
        await sandbox.aclose()
    assert counting.paths.count(CHATS_API) == 1, counting.paths
