"""The shared gRPC runtime: calls spread over every replica, errors mapped to status
codes, health turning NOT_SERVING on shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.reports.v1 import reports_pb2 as rpt
from bridge.scheduling.v1 import scheduling_pb2 as pb
from bridge.scheduling.v1 import scheduling_pb2_grpc
from services.common.errors import Conflict
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService

SERVICE = "bridge.scheduling.v1.SchedulingService"


class Replica(scheduling_pb2_grpc.SchedulingServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    async def GetAgendamento(
        self, request: pb.GetAgendamentoRequest, context: Any
    ) -> pb.Agendamento:
        if request.id == "taken":
            raise Conflict("slot already taken")
        if request.id == "bug":
            raise RuntimeError("secret internals")
        if request.id == "slow":
            await asyncio.sleep(1.0)
        return pb.Agendamento(id=self.name)

    async def RequestAgendamento(
        self, request: pb.AgendamentoRequest, context: Any
    ) -> pb.Agendamento:
        raise NotImplementedError

    async def UpdateAgendamentoStatus(
        self, request: pb.UpdateAgendamentoStatusRequest, context: Any
    ) -> pb.Agendamento:
        raise NotImplementedError

    async def EraseData(
        self, request: pb.EraseSchedulingDataRequest, context: Any
    ) -> pb.EraseSchedulingDataResponse:
        raise NotImplementedError

    async def GetReport(self, request: rpt.GetReportRequest, context: Any) -> rpt.Report:
        raise NotImplementedError


async def _replica(name: str) -> GrpcService:
    servicer = Replica(name)
    service = GrpcService(
        name=name,
        service_names=[SERVICE],
        register=lambda s: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(servicer, s),
        host="127.0.0.1",
        port=0,
        grace_seconds=1.0,
    )
    await service.start()
    return service


async def test_calls_are_spread_over_every_replica() -> None:
    replicas = [await _replica(f"r{i}") for i in range(3)]
    addresses = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    channel = create_channel(addresses, default_deadline_seconds=2.0)
    try:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        seen = {(await stub.GetAgendamento(pb.GetAgendamentoRequest(id="x"))).id for _ in range(30)}
        assert seen == {"r0", "r1", "r2"}
    finally:
        await channel.close(None)
        for replica in replicas:
            await replica.shutdown()


async def test_domain_errors_keep_their_meaning_and_bugs_hide_their_details() -> None:
    replica = await _replica("r")
    channel = create_channel(f"127.0.0.1:{replica.port}", default_deadline_seconds=2.0)
    try:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await stub.GetAgendamento(pb.GetAgendamentoRequest(id="taken"))
        assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert conflict.value.details() == "slot already taken"
        with pytest.raises(grpc.aio.AioRpcError) as bug:
            await stub.GetAgendamento(pb.GetAgendamentoRequest(id="bug"))
        assert bug.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (bug.value.details() or "")
    finally:
        await channel.close(None)
        await replica.shutdown()


async def test_health_says_not_serving_once_shutdown_begins() -> None:
    replica = await _replica("r")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}")
    health = health_pb2_grpc.HealthStub(channel)
    try:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await replica.health.enter_graceful_shutdown()
        answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await channel.close(None)
        await replica.shutdown()


async def test_every_call_has_a_deadline_and_a_longer_one_is_honoured() -> None:
    replica = await _replica("r")
    channel = create_channel(f"127.0.0.1:{replica.port}", default_deadline_seconds=0.3)
    try:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.GetAgendamento(pb.GetAgendamentoRequest(id="slow"))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answer = await stub.GetAgendamento(pb.GetAgendamentoRequest(id="slow"), timeout=3)
        assert answer.id == "r"
    finally:
        await channel.close(None)
        await replica.shutdown()
