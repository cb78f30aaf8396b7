"""Wiring of the scheduling service."""

from __future__ import annotations

from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceStub
from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayStub
from bridge.scheduling.v1 import scheduling_pb2_grpc
from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceStub
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, run
from services.common.logs import configure_logging
from services.common.n8n import N8nClient
from services.common.redis import create_redis
from services.common.settings import load_settings
from services.scheduling.servicer import Agendamentos, SchedulingServicer, delivery_pool
from services.scheduling.settings import SchedulingSettings
from services.scheduling.store import SchedulingStore

SERVICE_NAME = "bridge.scheduling.v1.SchedulingService"


def create_server(settings: SchedulingSettings) -> GrpcService:
    redis = create_redis(settings.redis_url)
    deadline = settings.grpc_deadline_seconds
    channels = [
        create_channel(settings.kommo_gateway_addr, deadline),
        create_channel(settings.vendedor_addr, deadline),
        create_channel(settings.conversation_addr, deadline),
    ]
    n8n = N8nClient(
        auth_header=settings.n8n_auth_header,
        signing_secret=settings.n8n_signing_secret,
        timeout_seconds=settings.n8n_timeout_seconds,
    )
    agendamentos = Agendamentos(
        settings,
        SchedulingStore(redis, settings.retention_seconds, settings.bridge_timezone),
        KommoGatewayStub(channels[0]),
        VendedorServiceStub(channels[1]),
        ConversationServiceStub(channels[2]),
        n8n,
    )
    servicer = SchedulingServicer(agendamentos)

    async def close() -> None:
        await n8n.aclose()
        for channel in channels:
            await channel.close(None)
        await redis.aclose()

    return GrpcService(
        name="scheduling",
        service_names=[SERVICE_NAME],
        register=lambda server: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            servicer, server
        ),
        host=settings.grpc_host,
        port=settings.grpc_port,
        grace_seconds=settings.shutdown_grace_seconds,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        background=[delivery_pool(agendamentos)],
        on_stop=close,
    )


async def serve(settings: SchedulingSettings) -> None:
    # The gRPC server must be built inside the running event loop.
    await create_server(settings).serve()


def main() -> None:
    settings = load_settings(SchedulingSettings)
    configure_logging("scheduling", settings.log_level, settings.n8n_secrets())
    run(serve(settings))
