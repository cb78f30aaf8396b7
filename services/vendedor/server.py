"""Wiring of the vendedor service."""

from __future__ import annotations

from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayStub
from bridge.vendedor.v1 import vendedor_pb2_grpc
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, run
from services.common.logs import configure_logging
from services.common.redis import create_redis
from services.common.settings import load_settings
from services.vendedor.servicer import PeriodicSync, Vendedores, VendedorServicer
from services.vendedor.settings import VendedorSettings
from services.vendedor.store import VendedorStore

SERVICE_NAME = "bridge.vendedor.v1.VendedorService"


def create_server(settings: VendedorSettings) -> tuple[GrpcService, Vendedores]:
    redis = create_redis(settings.redis_url)
    channel = create_channel(settings.kommo_gateway_addr, settings.grpc_deadline_seconds)
    gateway = KommoGatewayStub(channel)
    vendedores = Vendedores(VendedorStore(redis), gateway, settings)
    servicer = VendedorServicer(vendedores, gateway)

    async def close() -> None:
        await channel.close(None)
        await redis.aclose()

    service = GrpcService(
        name="vendedor",
        service_names=[SERVICE_NAME],
        register=lambda server: vendedor_pb2_grpc.add_VendedorServiceServicer_to_server(
            servicer, server
        ),
        host=settings.grpc_host,
        port=settings.grpc_port,
        grace_seconds=settings.shutdown_grace_seconds,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        background=[PeriodicSync(vendedores, settings)],
        on_stop=close,
    )
    return service, vendedores


async def serve(settings: VendedorSettings) -> None:
    # The gRPC server must be built inside the running event loop.
    service, vendedores = create_server(settings)
    if settings.vendedor_seed_samples:
        await vendedores.seed_samples()
    await service.serve()


def main() -> None:
    settings = load_settings(VendedorSettings)
    configure_logging("vendedor", settings.log_level)
    run(serve(settings))
