"""gRPC ⇄ domain for the scheduling service.

The contract is in protos/bridge/scheduling/v1; the behaviour (enrichment, durable
delivery to n8n, status callbacks) lands with the scheduling issue. Until then every
method answers UNIMPLEMENTED, which the edge reports as 501 — never a fake success.
"""

from __future__ import annotations

from typing import Any

import grpc

from bridge.scheduling.v1 import scheduling_pb2 as pb
from bridge.scheduling.v1.scheduling_pb2_grpc import SchedulingServiceServicer
from services.common.errors import NotImplementedYet

Context = grpc.aio.ServicerContext[Any, Any]

_PENDING = "scheduling requests are not available in this version yet"


class SchedulingServicer(SchedulingServiceServicer):
    async def RequestAgendamento(
        self, request: pb.AgendamentoRequest, context: Context
    ) -> pb.Agendamento:
        raise NotImplementedYet(_PENDING)

    async def GetAgendamento(
        self, request: pb.GetAgendamentoRequest, context: Context
    ) -> pb.Agendamento:
        raise NotImplementedYet(_PENDING)

    async def UpdateAgendamentoStatus(
        self, request: pb.UpdateAgendamentoStatusRequest, context: Context
    ) -> pb.Agendamento:
        raise NotImplementedYet(_PENDING)
