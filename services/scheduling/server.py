"""Wiring of the scheduling service."""

from __future__ import annotations

from bridge.scheduling.v1 import scheduling_pb2_grpc
from services.common.grpc_server import GrpcService, run
from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.scheduling.servicer import SchedulingServicer
from services.scheduling.settings import SchedulingSettings

SERVICE_NAME = "bridge.scheduling.v1.SchedulingService"


def create_server(settings: SchedulingSettings) -> GrpcService:
    servicer = SchedulingServicer()
    return GrpcService(
        name="scheduling",
        service_names=[SERVICE_NAME],
        register=lambda server: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            servicer, server
        ),
        host=settings.grpc_host,
        port=settings.grpc_port,
        grace_seconds=settings.shutdown_grace_seconds,
    )


async def serve(settings: SchedulingSettings) -> None:
    # The gRPC server must be built inside the running event loop.
    await create_server(settings).serve()


def main() -> None:
    settings = load_settings(SchedulingSettings)
    configure_logging("scheduling", settings.log_level)
    run(serve(settings))
