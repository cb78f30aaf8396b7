"""Proactive conversations and their message templates."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.grpc_server import client_metadata
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.ids import KommoId

router = APIRouter(tags=["conversations"], dependencies=API_KEY)

Trigger = Annotated[str, Path(min_length=1, max_length=40)]


class StartProactiveBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"lead_id": 9100001, "trigger": "form"}]}}

    lead_id: KommoId
    trigger: str = Field(min_length=1, max_length=40, description="form, download, agendamento…")


class TemplateBody(BaseModel):
    text: str = Field(
        min_length=1, max_length=2000, description="placeholders {nome} {lead} {vendedor}"
    )


@router.post(
    "/start-proactive",
    status_code=201,
    responses={
        200: {"description": "this lead already got this trigger's message: the same conversation"},
        400: {
            "description": "a trigger with no template (add one with PUT "
            "/proactive/templates/{trigger} or PROACTIVE_TEMPLATES_FILE), or a malformed one"
        },
        409: {"description": "refused: area not served by the vendedor, no vendedor, taken over"},
    },
)
async def start_proactive(body: StartProactiveBody, clients: ClientsDep) -> JSONResponse:
    """Open a conversation and get its first message out (once per lead and trigger)."""
    answer = await clients.conversation.StartProactive(
        conv.StartProactiveRequest(lead_id=body.lead_id, trigger=body.trigger),
        timeout=30,
        metadata=client_metadata(),
    )
    result: dict[str, Any] = {
        "conversation_id": answer.conversation_id,
        "created": answer.created,
        "status": answer.status,
        "scheduled_for": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(answer.scheduled_for))
        if answer.scheduled_for
        else None,
    }
    return JSONResponse(result, status_code=201 if answer.created else 200)


@router.get("/proactive/templates")
async def templates(clients: ClientsDep) -> dict[str, Any]:
    answer = await clients.conversation.GetTemplates(conv.GetTemplatesRequest())
    return {"templates": dict(answer.templates)}


@router.put("/proactive/templates/{trigger}")
async def set_template(trigger: Trigger, body: TemplateBody, clients: ClientsDep) -> dict[str, Any]:
    """Change a trigger's template (pt-BR, with {nome}, {lead} and {vendedor})."""
    answer = await clients.conversation.SetTemplate(
        conv.SetTemplateRequest(trigger=trigger, text=body.text), metadata=client_metadata()
    )
    return {"templates": dict(answer.templates)}
