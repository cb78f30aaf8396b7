"""Bot control: pause, resume and status, by API or by a vendedor's command."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.grpc_server import client_metadata
from services.common.kommo_ids import KOMMO_ID_MAX
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.ids import KommoId

router = APIRouter(tags=["bot"], dependencies=API_KEY)


class BotControlBody(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {"action": "pause", "lead_id": 9100001, "by": "Ana", "reason": "negociação"},
                {"action": "status", "conversation_id": "38e2dda8-…"},
            ]
        }
    }

    action: Literal["pause", "resume", "status"]
    conversation_id: str | None = Field(default=None, max_length=100)
    lead_id: KommoId | None = None
    contact_id: KommoId | None = None
    by: str = Field(default="", max_length=200)
    reason: str = Field(default="", max_length=500)
    pause_seconds: float = Field(
        default=0, ge=0, le=90 * 86400, description="0 = until BOT_AUTO_RESUME_AFTER"
    )

    @model_validator(mode="after")
    def _target(self) -> BotControlBody:
        if not (self.conversation_id or self.lead_id or self.contact_id):
            raise ValueError("one of conversation_id, lead_id or contact_id is required")
        return self


class CommandBody(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [{"command": "/assumir 9100001", "vendedor_id": 10000002}]
        }
    }

    command: str = Field(min_length=1, max_length=200)
    vendedor_id: int = Field(
        default=0, ge=0, le=KOMMO_ID_MAX, description="the Kommo user typing it (0 = unknown)"
    )
    vendedor_name: str = Field(default="", max_length=200)


def status_json(status: conv.BotStatus) -> dict[str, Any]:
    return {
        "conversation_id": status.conversation_id,
        "lead_id": status.lead_id or None,
        "bot_state": status.bot_state,
        "outcome": status.outcome or None,
        "paused_by": status.paused_by or None,
        "paused_reason": status.paused_reason or None,
        "paused_at": status.paused_at or None,
        "resumes_at": status.resumes_at or None,
        "history": [
            {"state": h.state, "by": h.by, "reason": h.reason, "at": h.at} for h in status.history
        ],
        "decision": decision_json(status.decision),
        # WhatsApp's 24-hour window: false = only an approved template reaches the
        # customer; until null = no window on the channel, or a customer who never wrote.
        "window_open": status.window_open,
        "window_open_until": status.window_open_until or None,
    }


def decision_json(decision: conv.BotDecision) -> dict[str, Any] | None:
    """Why the bot did or did not answer the last turn (None before the first turn)."""
    if not decision.action:
        return None
    return {
        "action": decision.action,
        "reason": decision.reason,
        "rule": decision.rule,
        "at": decision.at,
        "rules_version": decision.rules_version,
    }


@router.post("/bot-control")
async def bot_control(body: BotControlBody, clients: ClientsDep) -> dict[str, Any]:
    """Pause or resume the bot for a conversation (by id, lead or contact), or read it."""
    status = await clients.conversation.BotControl(
        conv.BotControlRequest(
            ref=conv.ConversationRef(
                conversation_id=body.conversation_id or "",
                lead_id=body.lead_id or 0,
                contact_id=body.contact_id or 0,
            ),
            action=body.action,
            by=body.by,
            reason=body.reason,
            pause_seconds=body.pause_seconds,
        ),
        metadata=client_metadata(),
    )
    return status_json(status)


@router.post("/vendedor/comandos")
async def vendedor_command(body: CommandBody, clients: ClientsDep) -> dict[str, Any]:
    """`/assumir <lead id>` takes a conversation over; `/liberar <lead id>` hands it back."""
    status = await clients.conversation.VendedorCommand(
        conv.VendedorCommandRequest(
            text=body.command, vendedor_id=body.vendedor_id, vendedor_name=body.vendedor_name
        ),
        metadata=client_metadata(),
    )
    return status_json(status)
