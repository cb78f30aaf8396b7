"""One Kommo gateway served over gRPC in-process (its real servicer, client, budget and
delivery on a real Redis), reaching Kommo through the httpx client a test gives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService
from services.kommo_gateway.delivery import Delivery
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.notes import Notes
from services.kommo_gateway.ratelimit import Budget, RateLimiter
from services.kommo_gateway.servicer import GatewayServicer
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.tokens import TokenManager

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

SERVICE = "bridge.kommo_gateway.v1.KommoGateway"


@asynccontextmanager
async def served_gateway(
    settings: GatewaySettings,
    redis: aioredis.Redis,
    http: httpx.AsyncClient,
    *,
    note_retry_seconds: Sequence[float] = (5.0,),
) -> AsyncIterator[KommoGatewayAsyncStub]:
    """With its note pool running (notes.py), its retries after `note_retry_seconds`."""
    limiter = RateLimiter(redis, settings.kommo_rate_limit_rps)
    budget = Budget(limiter, aging_seconds=2.0, call_seconds=0.5)
    tokens = TokenManager(settings, redis, http, limiter)
    kommo = KommoClient(settings, http, tokens, limiter, budget)
    await tokens.bootstrap()
    notes = Notes(redis, kommo, retry_seconds=note_retry_seconds)
    stopping = asyncio.Event()
    pool = asyncio.create_task(notes.run(stopping))
    delivery = Delivery(settings, redis, kommo, http, notes)
    servicer = GatewayServicer(settings, redis, kommo, delivery, notes)
    service = GrpcService(
        name="kommo_gateway",
        service_names=[SERVICE],
        register=lambda s: kommo_gateway_pb2_grpc.add_KommoGatewayServicer_to_server(servicer, s),
        host="127.0.0.1",
        port=0,
        grace_seconds=1.0,
    )
    await service.start()
    channel = create_channel(f"127.0.0.1:{service.port}", default_deadline_seconds=20.0)
    try:
        yield kommo_gateway_pb2_grpc.KommoGatewayStub(channel)
    finally:
        await channel.close(None)
        await service.shutdown()
        stopping.set()
        await pool
        await notes.aclose()
        await kommo.aclose()
        await budget.aclose()
