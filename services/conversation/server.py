"""Wiring of the conversation service: the one place its parts are assembled."""

from __future__ import annotations

import gc

from bridge.conversation.v1 import conversation_pb2_grpc
from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayStub
from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceStub
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, run
from services.common.logs import configure_logging
from services.common.n8n import N8nClient
from services.common.redis import create_redis
from services.common.settings import load_settings
from services.conversation.context import ContextChanges
from services.conversation.engine import Engine
from services.conversation.gauges import GaugeUpdater
from services.conversation.servicer import ConversationServicer
from services.conversation.settings import ConversationSettings
from services.conversation.stages.retention import RetentionSweep
from services.conversation.store.conversations import ConversationStore

SERVICE_NAME = "bridge.conversation.v1.ConversationService"


def create_server(settings: ConversationSettings) -> GrpcService:
    redis = create_redis(settings.redis_url)
    store = ConversationStore(
        redis, settings.retention_seconds, settings.event_partitions, settings.bridge_timezone
    )
    gateway_channel = create_channel(settings.kommo_gateway_addr, settings.grpc_deadline_seconds)
    vendedor_channel = create_channel(settings.vendedor_addr, settings.grpc_deadline_seconds)
    n8n = N8nClient(
        auth_header=settings.n8n_auth_header,
        signing_secret=settings.n8n_signing_secret,
        timeout_seconds=settings.n8n_timeout_seconds,
    )
    engine = Engine(
        settings,
        store,
        KommoGatewayStub(gateway_channel),
        VendedorServiceStub(vendedor_channel),
        n8n,
    )
    servicer = ConversationServicer(engine)

    async def close() -> None:
        engine.ctx.deliveries.close()
        await n8n.aclose()
        await gateway_channel.close(None)
        await vendedor_channel.close(None)
        await redis.aclose()

    return GrpcService(
        name="conversation",
        service_names=[SERVICE_NAME],
        register=lambda server: conversation_pb2_grpc.add_ConversationServiceServicer_to_server(
            servicer, server
        ),
        host=settings.grpc_host,
        port=settings.grpc_port,
        grace_seconds=settings.shutdown_grace_seconds,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        background=[
            *engine.workers(),
            GaugeUpdater(engine),
            RetentionSweep(engine.ctx),
            ContextChanges(engine.store.redis, engine.context),
        ],
        on_stop=close,
    )


async def serve(settings: ConversationSettings) -> None:
    service = create_server(settings)
    # Objects built at start-up live for the whole process: keep the collector off them
    # (it made the p99 of the ack path in prototypes).
    gc.freeze()
    await service.serve()


def main() -> None:
    settings = load_settings(ConversationSettings)
    configure_logging("conversation", settings.log_level, settings.secrets())
    run(serve(settings))
