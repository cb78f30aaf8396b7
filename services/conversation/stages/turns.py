"""Stage 2, turns: a conversation's pending messages become one envelope for n8n.

claim: the turn pool (TURN_CONCURRENCY slots) claims due conversations from
`conv:turns:due` — a conversation is one member, so one replica works on its turn at a
time. work: read the conversation and its pending messages, fetch the lead, contact and
vendedor, build the envelope. release: `commit_turn` stores the envelope (due now for
the outbox, stages/n8n_delivery.py) and takes the turn off the queue in one script.

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.due_queue import Claim, now_ms
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import client_metadata
from services.common.logs import flow, request_id
from services.common.n8n import new_event_id
from services.common.workpool import Work, WorkPool
from services.conversation import envelope, rules
from services.conversation.context import CONTACT, CONTACT_JSON, LEAD, VENDEDOR
from services.conversation.rulebook import InForce
from services.conversation.stages import Stage, StageContext, is_transient
from services.conversation.store import TurnOffer
from services.conversation.templates import TemplateRef

if TYPE_CHECKING:
    from services.conversation.stages.n8n_delivery import OutboxStage
    from services.conversation.stages.replies import ReplyStage

log = logging.getLogger(__name__)

_CONTEXT_RETRY_MS = 2_000
# A contact's leads read to find the one a contact-bound chat belongs to (the newest ids).
_CONTACT_LEADS_READ = 5
# Kommo's won and lost statuses: a closed lead is the last choice.
_CLOSED_STATUSES = frozenset({142, 143})


# What a turn reads: the conversation's record, its waiting messages, its recent history.
TurnView = tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What a turn reads before deciding and building its envelope."""

    lead_id: int
    contact_id: int
    lead: gw.Lead | None
    contact: gw.Contact | None
    vendedor: vd.Vendedor | None
    history: list[dict[str, Any]]


class TurnStage(Stage):
    """Turns of conversations, many side by side, one at a time per conversation."""

    def __init__(
        self, ctx: StageContext, *, outbox: OutboxStage, replies: ReplyStage, handoffs: WorkPool
    ) -> None:
        super().__init__(ctx)
        self.outbox = outbox
        self.replies = replies
        self.handoffs = handoffs
        self.pool: WorkPool = ctx.pool(
            "turn", self.store.turns, self.work, self.settings.turn_concurrency
        )
        self._hours = rules.HoursDefaults(
            timezone=self.settings.bridge_timezone,
            hours=self.settings.proactive_hours,
            days=self.settings.proactive_days,
        )

    async def work(self, claim: Claim) -> None:
        await self.ctx.attempt("turn", self.store.turns, claim, self.run_turn(claim), claim.member)

    @property
    def history_read(self) -> int:
        """History entries a turn reads (the newest)."""
        return self.settings.history_turns * 2

    def held(self, offer: TurnOffer) -> Work:
        """The work of a turn its message's apply claimed for this process, with what the
        turn reads in hand (run in the pool's slot: `WorkPool.adopt`)."""
        view = (offer.conversation, offer.pending, offer.history)

        async def work(claim: Claim) -> None:
            await self.ctx.attempt(
                "turn", self.store.turns, claim, self.run_turn(claim, view), claim.member
            )

        return work

    async def run_turn(self, claim: Claim, view: TurnView | None = None) -> None:
        with flow(request_id.get()):
            await self._run_turn(claim, view)

    async def _run_turn(self, claim: Claim, view: TurnView | None) -> None:
        conversation_id = claim.member
        conversation, pending, history = view or await self.store.turn_view(
            conversation_id, self.history_read
        )
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
            claim.settled = True  # re-scored
            return
        try:
            context = await self._context(conversation, history)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("context unavailable, turn retried: %s", exc)
            await self.store.turns.reschedule(claim, now_ms() + _CONTEXT_RETRY_MS)
            return
        if context.lead is None:
            context = await self._lead_through_contact(conversation, context)
        if context.lead is None:
            # n8n could not answer it (its reply needs a lead to reach the customer): the
            # messages stay in the history for the people who answer.
            log.warning(
                "no lead in Kommo for this conversation: recorded, not sent to n8n",
                extra={"conversation_id": conversation_id, "lead_id": context.lead_id},
            )
            await self.store.clear_inbox(conversation_id, len(pending))
            await self.store.turns.release(claim)
            await self.bots.count("messages_without_lead", len(pending), conversation_id)
            return
        in_force = await self.ctx.rules.current()
        decision, recorded = self._decide(conversation, pending, context, in_force)
        counted = {f"decision_{decision.action}": len(pending)}
        if decision.action != "answer" or decision.out_of_hours_reply:
            # Recorded now; an answered turn's decision rides in its commit below.
            await self.store.record_decision(conversation_id, recorded)
            await self.bots.count_many(counted, conversation_id)
        if decision.out_of_hours_reply:
            await self._out_of_hours(conversation, decision)
        if decision.action != "answer":
            await self._not_answered(claim, conversation, pending, decision)
            return
        payload, reply_token, event_id = self._envelope(
            conversation, pending, context, in_force.rules.templates
        )
        log.info(
            "turn for n8n",
            extra={"conversation_id": conversation_id, "event_id": event_id, "requests": rids},
        )
        answered_in_commit = not decision.out_of_hours_reply
        # With a slot free in the outbox pool, the commit leases the envelope to this
        # process and the pool POSTs the payload in hand (no claim, no read); else it is
        # due now and the pool claims it.
        outbox = self.outbox
        held = (
            Claim(event_id, now_ms() + self.settings.lease_ms, failing=False)
            if outbox.pool.reserve()
            else None
        )
        try:
            committed = await self.store.commit_turn(
                request_id=request_id.get(),
                conversation_id=conversation_id,
                claim=claim,
                consumed=len(pending),
                reply_token=reply_token,
                event_id=event_id,
                payload=payload,
                url=self.settings.reply_webhook_url,
                # n8n's answer time is the outbox's, not the turn's (a slow n8n holds no
                # turn slot): leased to this process's outbox pool, or due now for it.
                outbox_claim=held,
                check_after_ms=self.settings.turn_check_after_ms,
                turn_started_ms=min((received_ms(m) for m in pending), default=0) or now_ms(),
                inflight_token=conversation.get("inflight_token", ""),
                fields=recorded if answered_in_commit else None,
                counters=counted if answered_in_commit else None,
            )
        except BaseException:
            if held is not None:
                outbox.pool.unreserve()
            raise
        if held is not None:
            item = {
                "url": self.settings.reply_webhook_url,
                "payload": payload,
                "attempts": "0",
                "conversation_id": conversation_id,
                "request_id": request_id.get(),
            }
            outbox.pool.take(held if committed else None, outbox.held(item))
        if committed:
            if held is None:
                self.outbox.pool.kick()
            if self.settings.turn_check_after_ms:
                # n8n's silence hands the turn off then: this process's handoff pool
                # wakes for it (the commit queued it without waking anyone).
                self.handoffs.expect(conversation_id, now_ms() + self.settings.turn_check_after_ms)
        else:
            # Another turn of this conversation went to n8n meanwhile (or its messages
            # were taken, or it was erased): wait for that reply, as above.
            await self.store.defer_turn(
                conversation_id, now_ms() + turn_timeout_ms if turn_timeout_ms else 0
            )
            claim.settled = True  # re-scored

    async def _context(
        self, conversation: dict[str, str], history: list[dict[str, Any]]
    ) -> TurnContext:
        lead_id = int(conversation.get("lead_id") or 0)
        contact_id = int(conversation.get("contact_id") or 0)
        # Side by side where one read does not need another's answer: the lead names the
        # vendedor (and the contact, when the conversation does not know it yet).
        lead, contact = await asyncio.gather(self._lead(lead_id), self._contact(contact_id))
        if lead is not None and not contact_id:
            contact_id = lead.main_contact_id
            contact, vendedor = await asyncio.gather(
                self._contact(contact_id), self._vendedor(lead.responsible_user_id)
            )
        else:
            vendedor = await self._vendedor(lead.responsible_user_id if lead else 0)
        return TurnContext(lead_id, contact_id, lead, contact, vendedor, history)

    async def _lead_through_contact(
        self, conversation: dict[str, str], context: TurnContext
    ) -> TurnContext:
        """A chat bound to a contact names no lead: the contact's most recent open lead
        (else its most recent one) answers for it, and the conversation keeps it."""
        contact = context.contact
        if contact is None or int(conversation.get("lead_id") or 0):
            return context
        candidates = sorted(contact.lead_ids, reverse=True)[:_CONTACT_LEADS_READ]
        found = [
            lead for lead in await asyncio.gather(*map(self._lead, candidates)) if lead is not None
        ]
        if not found:
            return context
        lead = max(found, key=lambda x: (x.status_id not in _CLOSED_STATUSES, x.updated_at, x.id))
        await self.store.bind_lead(conversation["id"], lead.id)
        conversation["lead_id"] = str(lead.id)
        log.info(
            "lead found through the chat's contact",
            extra={"conversation_id": conversation["id"], "lead_id": lead.id},
        )
        vendedor = await self._vendedor(lead.responsible_user_id)
        return TurnContext(lead.id, context.contact_id, lead, contact, vendedor, context.history)

    def _decide(
        self,
        conversation: dict[str, str],
        pending: list[dict[str, Any]],
        context: TurnContext,
        in_force: InForce,
    ) -> tuple[rules.Decision, dict[str, str | int | float]]:
        """What the bot rules say about this turn, and what to record on the conversation
        (its status and debug view show it); the caller records it and counts it per
        message for the dashboard (in the turn's commit when it is answered)."""
        now = datetime.now(UTC)
        session_at = int(conversation.get("session_at") or 0)
        bot_at = max(
            (entry_seconds(h) for h in context.history if h.get("role") == "bot"), default=0.0
        )
        touched_ms = max(int(bot_at * 1000), session_at)
        engaged = conversation.get("session_engaged", "")
        lead, contact = context.lead, context.contact
        facts = rules.TurnFacts(
            now=now,
            texts=[str(m.get("text") or "") for m in pending if m.get("text")],
            session_started=engaged != "",
            session_engaged=None if engaged == "" else engaged == "1",
            last_bot_activity=datetime.fromtimestamp(touched_ms / 1000, UTC)
            if touched_ms
            else None,
            phones=list(contact.phones) if contact else [],
            contact_id=context.contact_id,
            tags=list(lead.tags) if lead else [],
            pipeline_id=lead.pipeline_id if lead else 0,
            stage_id=lead.status_id if lead else 0,
            out_of_hours_replied_for=conversation.get("ooh_period") or None,
        )
        decision = rules.decide(in_force.rules, facts, self._hours)
        at = now_ms()
        fields: dict[str, str | int | float] = {
            "decision": decision.action,
            "decision_reason": decision.reason,
            "decision_rule": decision.rule,
            "decision_at": at,
            "decision_rules_version": in_force.version,
            "pipeline_id": facts.pipeline_id,
            "stage_id": facts.stage_id,
            # Whose the conversation is, for the reports (reports.py).
            "vendedor_id": lead.responsible_user_id if lead else 0,
        }
        if decision.engaged is not None and (decision.expired or engaged == ""):
            # A session's verdict is taken once, on its first messages.
            fields["session_engaged"] = "1" if decision.engaged else "0"
            fields["session_at"] = at
        if decision.expired:
            # The history for n8n starts again with this turn's messages.
            fields["history_since"] = (
                min((int(float(m.get("created_at") or 0) * 1000) for m in pending), default=at)
                or at
            )
        log.info(
            "bot rules: %s (%s)",
            decision.action,
            decision.rule,
            extra={"conversation_id": conversation["id"], "reason": decision.reason},
        )
        if decision.expired:
            conversation["history_since"] = str(fields["history_since"])
        return decision, fields

    async def _out_of_hours(self, conversation: dict[str, str], decision: rules.Decision) -> None:
        """The out-of-hours message, once per conversation per closed period (the key
        makes a retry of this turn send it once too)."""
        assert decision.out_of_hours_reply is not None
        conversation_id = conversation["id"]
        try:
            await self.replies.send(
                reply_token="",
                conversation_id=conversation_id,
                lead_id=int(conversation.get("lead_id") or 0),
                text=decision.out_of_hours_reply,
                note="Mensagem automática de fora do horário de atendimento.",
                idempotency_key=f"out-of-hours:{conversation_id}:{decision.period}",
            )
        except (Conflict, InvalidInput, NotFound) as exc:
            log.info("out-of-hours reply not sent: %s", exc)
            return
        await self.store.record_decision(conversation_id, {"ooh_period": decision.period or ""})
        await self.bots.count("out_of_hours_replies")

    async def _not_answered(
        self,
        claim: Claim,
        conversation: dict[str, str],
        pending: list[dict[str, Any]],
        decision: rules.Decision,
    ) -> None:
        conversation_id = conversation["id"]
        if decision.action == "hold" and decision.hold_until is not None:
            # The messages wait in the inbox: at the opening hour the turn comes again.
            await self.store.turns.reschedule(claim, int(decision.hold_until.timestamp() * 1000))
            return
        # Ignored, not triggered, or handed to a person: what the customer wrote stays in
        # the history, for the people who answer.
        await self.store.clear_inbox(conversation_id, len(pending))
        await self.store.turns.release(claim)
        if decision.action == "finish":
            await self.bot.handoff(conversation_id, "cliente", decision.reason, "handoffs_keyword")

    def _envelope(
        self,
        conversation: dict[str, str],
        pending: list[dict[str, Any]],
        context: TurnContext,
        configured: Mapping[str, TemplateRef],
    ) -> tuple[str, str, str]:
        lead, contact, vendedor = context.lead, context.contact, context.vendedor
        lead_id, contact_id = context.lead_id, context.contact_id
        history_since = int(conversation.get("history_since") or 0) / 1000
        history = [h for h in context.history if entry_seconds(h) >= history_since]
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
                **envelope.window_json(self.settings.window_policy, conversation, time.time()),
            },
            lead=envelope.lead_json(
                lead,
                lead_id,
                reply_field_id=self.settings.kommo_reply_field_id,
                lead_fields=self.settings.lead_fields,
            ),
            contact=self._contact_json(contact, contact_id),
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
            templates=envelope.templates_json(configured),
        )
        return json.dumps(body, ensure_ascii=False), reply_token, event_id

    def _contact_json(self, contact: gw.Contact | None, contact_id: int) -> dict[str, Any] | None:
        """The contact as the envelope carries it, made once per copy of the contact."""
        disclosure = self.settings.contact_disclosure
        if contact is None:
            return envelope.contact_json(None, contact_id, disclosure)
        return self.ctx.context.made_from(
            CONTACT_JSON,
            contact.id,
            contact,
            lambda: envelope.contact_json(contact, contact_id, disclosure),
        )

    # The lead, contact and vendedor: this replica's young copy (services/conversation/
    # context.py), else asked for and kept. What was not found is asked again next time.

    async def _lead(self, lead_id: int) -> gw.Lead | None:
        if not lead_id:
            return None
        cached: gw.Lead | None = self.ctx.context.get(LEAD, lead_id)
        if cached is not None:
            return cached
        try:
            lead = await self.gateway.GetLead(
                gw.GetLeadRequest(lead_id=lead_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        self.ctx.context.put(LEAD, lead_id, lead)
        return lead

    async def _contact(self, contact_id: int) -> gw.Contact | None:
        if not contact_id:
            return None
        cached: gw.Contact | None = self.ctx.context.get(CONTACT, contact_id)
        if cached is not None:
            return cached
        try:
            contact = await self.gateway.GetContact(
                gw.GetContactRequest(contact_id=contact_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        self.ctx.context.put(CONTACT, contact_id, contact)
        return contact

    async def _vendedor(self, user_id: int) -> vd.Vendedor | None:
        if not user_id:
            return None
        cached: vd.Vendedor | None = self.ctx.context.get(VENDEDOR, user_id)
        if cached is not None:
            return cached
        try:
            vendedor = await self.vendedores.GetVendedor(
                vd.GetVendedorRequest(vendedor_id=user_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            # The envelope is still worth sending without the vendedor.
            log.info("no vendedor for user %s: %s", user_id, exc.code().name)
            return None
        self.ctx.context.put(VENDEDOR, user_id, vendedor)
        return vendedor


def entry_seconds(entry: dict[str, Any]) -> float:
    """When a history entry was written (Unix seconds; 0 when it does not say)."""
    try:
        return datetime.fromisoformat(str(entry.get("at"))).timestamp()
    except ValueError:
        return 0.0


def received_ms(entry: Mapping[str, Any]) -> int:
    """When the bridge took a pending message in: its ingest stream id's milliseconds (the
    webhook's ack). Kommo's created_at, in whole seconds, would add up to a second to the
    reply time measured from it; it is the fallback for an entry without a stream id."""
    stamp, dash, _ = str(entry.get("seq") or "").partition("-")
    if dash and stamp.isdigit():
        return int(stamp)
    return int(entry.get("created_at") or 0) * 1000
