"""Scheduling (agendamento): requests delivered to n8n, and their status."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from bridge.scheduling.v1 import scheduling_pb2 as sc
from services.common.grpc_server import client_metadata
from services.edge_api.deps import ANSWER_KEY, API_KEY, ClientsDep
from services.edge_api.ids import KommoId

# Each route names its key: n8n's may report a status (ANSWER_KEY), nothing else here.
router = APIRouter(tags=["scheduling"])

AgendamentoId = Annotated[str, Path(min_length=1, max_length=100)]


class AgendamentoBody(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "lead_id": 9100001,
                    "requested_at": "2026-12-01T14:30",
                    "notes": "Revisão da aposentadoria",
                },
                {"conversation_id": "38e2dda8-…", "preference": "terça à tarde"},
            ]
        }
    }

    lead_id: KommoId | None = None
    contact_id: KommoId | None = None
    conversation_id: str | None = Field(default=None, max_length=100)
    requested_at: str = Field(
        default="",
        max_length=64,
        description="ISO 8601 date-time; without an offset it is in BRIDGE_TIMEZONE",
    )
    preference: str = Field(default="", max_length=500)
    notes: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _complete(self) -> AgendamentoBody:
        if not (self.lead_id or self.contact_id or self.conversation_id):
            raise ValueError("one of lead_id, contact_id or conversation_id is required")
        if not (self.requested_at.strip() or self.preference.strip()):
            raise ValueError("requested_at or preference is required")
        return self


class StatusBody(BaseModel):
    status: Literal["confirmed", "failed", "delivered"]
    detail: str = Field(default="", max_length=1000)


def agendamento_json(a: sc.Agendamento) -> dict[str, Any]:
    return {
        "id": a.id,
        "status": a.status,
        "duplicate": a.duplicate,
        "lead_id": a.lead_id,
        "conversation_id": a.conversation_id or None,
        "vendedor": {"id": a.vendedor_id, "name": a.vendedor_name},
        "requested_at": a.requested_at or None,
        "preference": a.preference or None,
        "attempts": a.attempts,
        "detail": a.detail or None,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    }


@router.post(
    "/agendamento/request",
    dependencies=API_KEY,
    status_code=201,
    responses={200: {"description": "the same lead and slot was requested before"}},
)
async def request_agendamento(body: AgendamentoBody, clients: ClientsDep) -> JSONResponse:
    """Enrich a scheduling request (lead, contact, vendedor) and deliver it to n8n."""
    answer = await clients.scheduling.RequestAgendamento(
        sc.AgendamentoRequest(
            lead_id=body.lead_id or 0,
            contact_id=body.contact_id or 0,
            conversation_id=body.conversation_id or "",
            requested_at=body.requested_at,
            preference=body.preference,
            notes=body.notes,
        ),
        timeout=30,
        metadata=client_metadata(),
    )
    return JSONResponse(agendamento_json(answer), status_code=200 if answer.duplicate else 201)


@router.get("/agendamento/{agendamento_id}", dependencies=API_KEY)
async def get_agendamento(agendamento_id: AgendamentoId, clients: ClientsDep) -> dict[str, Any]:
    answer = await clients.scheduling.GetAgendamento(
        sc.GetAgendamentoRequest(id=agendamento_id), metadata=client_metadata()
    )
    return agendamento_json(answer)


@router.post("/agendamento/{agendamento_id}/status", dependencies=ANSWER_KEY)
async def update_status(
    agendamento_id: AgendamentoId, body: StatusBody, clients: ClientsDep
) -> dict[str, Any]:
    """n8n's callback: the agenda row was written (confirmed) or not (failed). Takes
    n8n's key (EDGE_N8N_API_KEY) as well as the operator's."""
    answer = await clients.scheduling.UpdateAgendamentoStatus(
        sc.UpdateAgendamentoStatusRequest(
            id=agendamento_id, status=body.status, detail=body.detail
        ),
        metadata=client_metadata(),
    )
    return agendamento_json(answer)
