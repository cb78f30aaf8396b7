"""A caller refused for now is told when to come back: the gateway's figure travels as
gRPC trailing metadata (through any service in between) and becomes the edge's
`Retry-After`, in whole seconds, at least 1; without a figure, 1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from fastapi import Request

from bridge.reports.v1 import reports_pb2 as rpt
from bridge.scheduling.v1 import scheduling_pb2 as pb
from bridge.scheduling.v1 import scheduling_pb2_grpc
from services.common.errors import RETRY_AFTER_METADATA, RateLimited, retry_after_trailer
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService
from services.edge_api.errors import bridge_error_handler, grpc_error_handler
from services.kommo_gateway.ratelimit import BudgetBusy

if TYPE_CHECKING:
    from bridge.scheduling.v1.scheduling_pb2_grpc import SchedulingServiceAsyncStub

SERVICE = "bridge.scheduling.v1.SchedulingService"
REQUEST = Request({"type": "http", "method": "GET", "path": "/", "headers": []})


class Refusing(scheduling_pb2_grpc.SchedulingServiceServicer):
    """Refuses by the id asked for; `upstream`, when set, is asked instead (a service in
    between, whose failing call keeps its code, message and trailers)."""

    def __init__(self, upstream: SchedulingServiceAsyncStub | None = None) -> None:
        self.upstream = upstream

    async def GetAgendamento(
        self, request: pb.GetAgendamentoRequest, context: Any
    ) -> pb.Agendamento:
        if self.upstream is not None:
            return await self.upstream.GetAgendamento(request)
        if request.id == "budget":
            raise BudgetBusy(2.3)
        raise RateLimited("Kommo rate limit: too many requests")

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


async def _serve(servicer: Refusing) -> GrpcService:
    service = GrpcService(
        name="refusing",
        service_names=[SERVICE],
        register=lambda s: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(servicer, s),
        host="127.0.0.1",
        port=0,
        grace_seconds=1.0,
    )
    await service.start()
    return service


@pytest.fixture
async def chain() -> AsyncIterator[SchedulingServiceAsyncStub]:
    """A stub of a service that asks the refusing one."""
    gateway = await _serve(Refusing())
    to_gateway = create_channel(f"127.0.0.1:{gateway.port}", default_deadline_seconds=2.0)
    middle = await _serve(Refusing(scheduling_pb2_grpc.SchedulingServiceStub(to_gateway)))
    to_middle = create_channel(f"127.0.0.1:{middle.port}", default_deadline_seconds=2.0)
    try:
        yield scheduling_pb2_grpc.SchedulingServiceStub(to_middle)
    finally:
        await to_middle.close(None)
        await middle.shutdown()
        await to_gateway.close(None)
        await gateway.shutdown()


async def _refusal(stub: SchedulingServiceAsyncStub, id_: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetAgendamento(pb.GetAgendamentoRequest(id=id_))
    return refused.value


async def test_the_budgets_figure_reaches_the_edge_as_retry_after_rounded_up(
    chain: SchedulingServiceAsyncStub,
) -> None:
    refused = await _refusal(chain, "budget")
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try again in 3 s" in (refused.details() or "")
    assert retry_after_trailer(refused) == "3"
    answer = await grpc_error_handler(REQUEST, refused)
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"


async def test_a_refusal_without_a_figure_says_one_second(
    chain: SchedulingServiceAsyncStub,
) -> None:
    refused = await _refusal(chain, "kommo")
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after_trailer(refused) is None
    answer = await grpc_error_handler(REQUEST, refused)
    assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("trailer", "header"), [("4", "4"), ("0", "1"), ("2.2", "3"), ("soon", "1")]
)
async def test_the_edge_takes_whole_seconds_at_least_one(trailer: str, header: str) -> None:
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((RETRY_AFTER_METADATA, trailer)),
        details="busy",
        debug_error_string="",
    )
    answer = await grpc_error_handler(REQUEST, refused)
    assert answer.headers["retry-after"] == header


async def test_a_rate_limit_raised_at_the_edge_keeps_its_figure() -> None:
    answer = await bridge_error_handler(REQUEST, RateLimited("busy", retry_after_seconds=5))
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "5"
    answer = await bridge_error_handler(REQUEST, RateLimited("busy"))
    assert answer.headers["retry-after"] == "1"
