"""Conversations: replies from n8n."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from bridge.conversation.v1 import conversation_pb2 as conv
from services.edge_api.clients import Clients
from services.edge_api.deps import ANSWER_KEY, ClientsDep
from services.edge_api.ids import KommoId

# Deliveries wait for the lead's reply slot and Kommo's rate limit.
_REPLY_DEADLINE_SECONDS = 30.0
# A conversation replica that dies mid-call answers UNAVAILABLE ("Stream removed"); the
# channel's round robin sends the next try to another replica.
_REPLY_ATTEMPTS = 3
_REPLY_RETRY_SECONDS = 0.2

router = APIRouter(tags=["conversations"])
# Stored and not yet with the customer: 202.
_NOT_YET_DELIVERED = frozenset({"queued", "waiting_for_customer", "waiting_for_template"})


class SendResponseBody(BaseModel):
    """A reply from n8n for a customer (docs/n8n-contract.md). By `lead_id`, a lead with
    no conversation yet gets one (e.g. confirming an agendamento)."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"reply_token": "9f2c…", "text": "Olá Maria! Posso ajudar?"},
                {
                    "lead_id": 9100018,
                    "idempotency_key": "agendamento:5c0f…",
                    "text": "Olá Maria! Sua consulta está agendada.",
                },
            ]
        }
    }

    reply_token: str | None = Field(default=None, max_length=200)
    conversation_id: str | None = Field(default=None, max_length=200)
    lead_id: KommoId | None = None
    text: str = Field(default="", max_length=10_000)
    messages: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None,
        max_length=20,
        description="instead of `text`: the reply as several WhatsApp messages, sent in "
        "order, each after a pause that reads like typing",
    )
    note: str | None = Field(default=None, max_length=10_000)
    idempotency_key: str | None = Field(default=None, max_length=200)
    handoff: bool = False
    handoff_reason: str | None = Field(default=None, max_length=1000)
    template: str | None = Field(
        default=None,
        max_length=60,
        description="instead of text: an approved WhatsApp template by its purpose, one of "
        "the envelope's `templates` (what reaches a customer whose 24-hour window is closed)",
    )
    variables: dict[
        Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=1024)]
    ] = Field(
        default_factory=dict,
        max_length=20,
        description="the template's variables (the envelope lists them); the bridge fills "
        "nome, lead and vendedor itself when they are not given",
    )

    @model_validator(mode="after")
    def _target(self) -> SendResponseBody:
        if not (self.reply_token or self.conversation_id or self.lead_id):
            raise ValueError("one of reply_token, conversation_id or lead_id is required")
        if self.text.strip() and self.messages:
            raise ValueError("send either text or messages, not both")
        given = self.text.strip() or any(m.strip() for m in self.messages or [])
        if self.template and given:
            raise ValueError("send either a template or text (or messages), not both")
        if not given and not self.handoff and not self.template:
            raise ValueError(
                "text (or messages, or a template) is required, unless handoff is true"
            )
        return self


class SendResponseResult(BaseModel):
    status: str = Field(
        description="delivered, delivering (the first message is out, the others follow "
        "paced like typing), queued (Kommo slow: retried), duplicate, template_sent (a "
        "proactive start's first message went as its WhatsApp template), waiting_for_customer "
        "(WhatsApp's 24-hour window was closed: the reopen template went, the reply goes when "
        "the customer writes again), handed_to_vendedor (window closed, LATE_REPLY_MODE="
        "vendedor) or waiting_for_template (window closed, no approved template: kept as "
        "failing work)"
    )
    conversation_id: str
    delivery_id: str
    lead_id: int | None


@router.post(
    "/send-response",
    dependencies=ANSWER_KEY,
    response_model=SendResponseResult,
    responses={
        202: {
            "description": "stored, not yet with the customer: Kommo is slow or down (retried), "
            "or WhatsApp's 24-hour window is closed (status says which)"
        },
        404: {"description": "unknown reply_token or conversation, or a lead Kommo does not know"},
        409: {"description": "a person took the conversation over: not sent"},
    },
)
async def send_response(body: SendResponseBody, clients: ClientsDep) -> JSONResponse:
    return await answer_reply(body, clients)


async def answer_reply(body: SendResponseBody, clients: Clients) -> JSONResponse:
    """The reply handed to the conversation service, and its answer (also the fast
    path's: services/edge_api/reply_fast_path.py)."""
    request = conv.SendReplyRequest(
        reply_token=body.reply_token or "",
        conversation_id=body.conversation_id or "",
        lead_id=body.lead_id or 0,
        text=body.text,
        note=body.note or "",
        # A reply without a token or key gets one here, so that trying it again on
        # another replica (below) can never deliver it twice.
        idempotency_key=body.idempotency_key or ("" if body.reply_token else uuid.uuid4().hex),
        handoff=body.handoff,
        handoff_reason=body.handoff_reason or "",
        parts=body.messages or [],
        template=body.template or "",
        variables=body.variables,
    )
    answer = await send_reply(clients, request)
    result = SendResponseResult(
        status=answer.status,
        conversation_id=answer.conversation_id,
        delivery_id=answer.delivery_id,
        lead_id=answer.lead_id or None,
    )
    return JSONResponse(
        result.model_dump(), status_code=202 if answer.status in _NOT_YET_DELIVERED else 200
    )


async def send_reply(clients: Clients, request: conv.SendReplyRequest) -> conv.SendReplyResponse:
    """SendReply, tried again on another replica when the first one is gone: the reply is
    idempotent by its token (or key), so a try that did reach a dying replica comes back
    as "duplicate" and is still delivered once."""
    for attempt in range(1, _REPLY_ATTEMPTS):
        try:
            return await clients.replies.send(request, _REPLY_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(_REPLY_RETRY_SECONDS * attempt)
    return await clients.replies.send(request, _REPLY_DEADLINE_SECONDS)
