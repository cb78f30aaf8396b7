"""Wiring of the Kommo gateway."""

from __future__ import annotations

import gc
import logging

import httpx

from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from services.common.errors import BridgeError
from services.common.grpc_server import GrpcService, run
from services.common.logs import configure_logging
from services.common.redis import create_redis
from services.common.settings import load_settings
from services.kommo_gateway.delivery import Delivery
from services.kommo_gateway.handoff import Handoff
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.notes import Notes
from services.kommo_gateway.ratelimit import Budget, RateLimiter
from services.kommo_gateway.servicer import GatewayServicer
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.tokens import TOKEN_STATE, TokenKeeper, TokenManager

SERVICE_NAME = "bridge.kommo_gateway.v1.KommoGateway"

log = logging.getLogger(__name__)


def create_server(settings: GatewaySettings) -> tuple[GrpcService, TokenManager]:
    redis = create_redis(settings.redis_url)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=50))
    limiter = RateLimiter(redis, settings.kommo_rate_limit_rps, read_with=TOKEN_STATE)
    budget = Budget(limiter, settings.kommo_priority_aging_seconds, settings.kommo_call_seconds)
    tokens = TokenManager(settings, redis, http, limiter)
    handoff = Handoff(redis)
    kommo = KommoClient(settings, http, tokens, limiter, budget, handoff)
    notes = Notes(redis, kommo)
    delivery = Delivery(settings, redis, kommo, http, notes)
    servicer = GatewayServicer(settings, redis, kommo, delivery, notes)

    async def close() -> None:
        await notes.aclose()
        await kommo.aclose()
        await handoff.aclose()
        await budget.aclose()
        await http.aclose()
        await redis.aclose()

    service = GrpcService(
        name="kommo_gateway",
        service_names=[SERVICE_NAME],
        register=lambda server: kommo_gateway_pb2_grpc.add_KommoGatewayServicer_to_server(
            servicer, server
        ),
        host=settings.grpc_host,
        port=settings.grpc_port,
        grace_seconds=settings.shutdown_grace_seconds,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        background=[TokenKeeper(tokens), notes],
        on_stop=close,
    )
    return service, tokens


async def serve(settings: GatewaySettings) -> None:
    service, tokens = create_server(settings)
    try:
        await tokens.bootstrap()
    except BridgeError as exc:
        # The service still starts: health and /test-kommo-connectivity explain the problem.
        log.error("Kommo credentials could not be used: %s", exc)
    gc.freeze()
    await service.serve()


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging("kommo_gateway", settings.log_level, settings.secrets())
    run(serve(settings))
