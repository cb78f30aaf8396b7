"""Stage 2, turns: a conversation's pending messages become one envelope for n8n.

claim: the turn pool (TURN_CONCURRENCY slots) claims due conversations from
`conv:turns:due` — a conversation is one member, so one replica works on its turn at a
time. work: read the conversation and its pending messages, fetch the lead, contact and
vendedor, build the envelope. release: `commit_turn` stores the envelope (due now for
the outbox, stages/outbox.py) and takes the turn off the queue in one script.

One turn at a time per conversation: a conversation with an envelope at n8n awaiting its
reply (`inflight_token`) defers its next turn until that reply settles it (or until the
handoff time); `commit_turn` commits only if the turn in flight is still the one this
turn saw, so two turns built side by side never both go to n8n.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.due_queue import Claim, now_ms
from services.common.grpc_server import client_metadata
from services.common.logs import flow, request_id
from services.common.n8n import new_event_id
from services.common.workpool import WorkPool
from services.conversation import envelope
from services.conversation.stages import Stage, is_transient

if TYPE_CHECKING:
    from services.conversation.engine import Engine

log = logging.getLogger(__name__)

_CONTEXT_RETRY_MS = 2_000


class TurnStage(Stage):
    """Turns of conversations, many side by side, one at a time per conversation."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.pool: WorkPool = engine.pool(
            "turn", self.store.turns, self.work, self.settings.turn_concurrency
        )

    async def work(self, claim: Claim) -> None:
        await self.engine.attempt(
            "turn", self.store.turns, claim, self.run_turn(claim), claim.member
        )

    async def run_turn(self, claim: Claim) -> None:
        with flow(request_id.get()):
            await self._run_turn(claim)

    async def _run_turn(self, claim: Claim) -> None:
        conversation_id = claim.member
        conversation = await self.store.conversation(conversation_id)
        pending = await self.store.inbox(conversation_id)
        if not conversation or not pending:
            await self.store.turns.release(claim)
            return
        # A burst is one turn: it carries on the flow of its first message.
        rids = [str(m.pop("request_id")) for m in pending if m.get("request_id")]
        if rids:
            request_id.set(rids[0])
        if conversation.get("bot_state", "active") != "active":
            # A person is answering; what the customer wrote is in the history for them.
            await self.store.clear_inbox(conversation_id, len(pending))
            await self.store.turns.release(claim)
            return
        inflight_since = int(conversation.get("inflight_since") or 0)
        turn_timeout_ms = int(self.settings.bot_handoff_after * 1000)
        if inflight_since and (turn_timeout_ms == 0 or now_ms() - inflight_since < turn_timeout_ms):
            # One turn at a time: the reply to the previous turn starts the next one
            # (or, if it never comes, the handoff time does).
            await self.store.defer_turn(
                conversation_id, inflight_since + turn_timeout_ms if turn_timeout_ms else 0
            )
            return
        try:
            payload, reply_token, event_id = await self._build_turn(conversation, pending)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("context unavailable, turn retried: %s", exc)
            await self.store.turns.reschedule(claim, now_ms() + _CONTEXT_RETRY_MS)
            return
        log.info(
            "turn for n8n",
            extra={"conversation_id": conversation_id, "event_id": event_id, "requests": rids},
        )
        committed = await self.store.commit_turn(
            request_id=request_id.get(),
            conversation_id=conversation_id,
            claim=claim,
            consumed=len(pending),
            reply_token=reply_token,
            event_id=event_id,
            payload=payload,
            url=self.settings.reply_webhook_url,
            # Due now, for the outbox pool: n8n's answer time is the outbox's, not the
            # turn's (a slow n8n holds no turn slot).
            outbox_lease_ms=0,
            check_after_ms=self.settings.turn_check_after_ms,
            turn_started_ms=min((int(m.get("created_at") or 0) * 1000 for m in pending), default=0)
            or now_ms(),
            inflight_token=conversation.get("inflight_token", ""),
        )
        if committed:
            self.engine.envelope_due()
        else:
            # Another turn of this conversation went to n8n meanwhile (or its messages
            # were taken, or it was erased): wait for that reply, as above.
            await self.store.defer_turn(
                conversation_id, now_ms() + turn_timeout_ms if turn_timeout_ms else 0
            )

    async def _build_turn(
        self, conversation: dict[str, str], pending: list[dict[str, Any]]
    ) -> tuple[str, str, str]:
        lead_id = int(conversation.get("lead_id") or 0)
        contact_id = int(conversation.get("contact_id") or 0)
        # Side by side where one read does not need another's answer: the lead names the
        # vendedor (and the contact, when the conversation does not know it yet).
        lead, contact, history = await asyncio.gather(
            self._lead(lead_id),
            self._contact(contact_id),
            self.store.history(conversation["id"], self.settings.history_turns * 2),
        )
        if lead is not None and not contact_id:
            contact_id = lead.main_contact_id
            contact, vendedor = await asyncio.gather(
                self._contact(contact_id), self._vendedor(lead.responsible_user_id)
            )
        else:
            vendedor = await self._vendedor(lead.responsible_user_id if lead else 0)
        messages = envelope.order_messages(pending)
        reply_token = uuid.uuid4().hex
        event_id = new_event_id()
        body = envelope.message_envelope(
            event_id=event_id,
            conversation={
                "id": conversation["id"],
                "lead_id": lead_id or None,
                "contact_id": contact_id or None,
                "chat_id": conversation.get("chat_id"),
                "talk_id": int(conversation.get("talk_id") or 0) or None,
                "bot_state": conversation.get("bot_state", "active"),
            },
            lead=envelope.lead_json(
                lead, lead_id, reply_field_id=self.settings.kommo_reply_field_id
            ),
            contact=envelope.contact_json(contact, contact_id, self.settings.contact_disclosure),
            vendedor=envelope.vendedor_json(vendedor),
            messages=messages,
            history=envelope.bounded_history(
                [h for h in history if h.get("role") != "command"],
                {m["id"] for m in messages},
                self.settings.history_max_chars,
            )[-self.settings.history_turns :]
            if self.settings.history_turns
            else [],
            callback_url=self.settings.callback_url,
            reply_token=reply_token,
            occurred_at=time.time(),
        )
        return json.dumps(body, ensure_ascii=False), reply_token, event_id

    async def _lead(self, lead_id: int) -> gw.Lead | None:
        if not lead_id:
            return None
        try:
            return await self.gateway.GetLead(
                gw.GetLeadRequest(lead_id=lead_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _contact(self, contact_id: int) -> gw.Contact | None:
        if not contact_id:
            return None
        try:
            return await self.gateway.GetContact(
                gw.GetContactRequest(contact_id=contact_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _vendedor(self, user_id: int) -> vd.Vendedor | None:
        if not user_id:
            return None
        try:
            return await self.vendedores.GetVendedor(
                vd.GetVendedorRequest(vendedor_id=user_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            # The envelope is still worth sending without the vendedor.
            log.info("no vendedor for user %s: %s", user_id, exc.code().name)
            return None
