"""The conversation service's work: applying webhook events, turns, the n8n outbox and
reply delivery. Each loop runs in every replica; Redis decides who does what.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.due_queue import Claim, DueQueue, RetryPolicy, WorkFailures, describe, now_ms
from services.common.errors import Conflict, InvalidInput, NotFound, Unavailable
from services.common.grpc_server import BackgroundTask, client_metadata
from services.common.logs import flow, request_id
from services.common.metrics import BOT_STATES, N8N_DELIVERIES, QUEUE_DEPTH
from services.common.n8n import N8nClient, new_event_id, next_delay
from services.conversation import bot, envelope
from services.conversation.control import BotController
from services.conversation.events import LeadEvent, MessageEvent
from services.conversation.settings import ConversationSettings
from services.conversation.starter import ProactiveStarter
from services.conversation.store import (
    EVENTS_STREAM,
    OUTBOX_DUE,
    REPLIES_DUE,
    WORK_FAILURES,
    WORKERS_GROUP,
    Applied,
    BotStore,
    ConversationStore,
    Operations,
    Privacy,
)

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub

log = logging.getLogger(__name__)

# gRPC codes after which trying again later can succeed.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ABORTED,
    }
)
_CONTEXT_RETRY_MS = 2_000
# A delivery waits for the lead's reply slot and for Kommo's rate limit.
_DELIVERY_DEADLINE_SECONDS = 25.0
_MAX_CLAIM = 32


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT
    return isinstance(exc, RedisError | Unavailable | OSError)


class Engine:
    """Everything a conversation replica does, shared by the servicer and the loops."""

    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        gateway: KommoGatewayAsyncStub,
        vendedores: VendedorServiceAsyncStub,
        n8n: N8nClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.vendedores = vendedores
        self.n8n = n8n
        self.consumer = consumer_name()
        self.bots = BotStore(store.redis, store.retention_seconds)
        self.bot = BotController(settings, store, self.bots, gateway)
        self.proactive = ProactiveStarter(self)
        self.failures = WorkFailures(
            store.redis,
            WORK_FAILURES,
            RetryPolicy(
                settings.work_max_attempts,
                settings.work_retry_base_seconds,
                settings.work_retry_max_seconds,
            ),
        )

    async def attempt(
        self,
        kind: str,
        queue: DueQueue,
        claim: Claim,
        work: Awaitable[object],
        conversation_id: str = "",
    ) -> None:
        """Run one claimed work item. When it fails it is tried again after a growing
        delay and, after WORK_MAX_ATTEMPTS failures (a dependency being unavailable does
        not count), parked as a dead letter with its reason: one bad item never loops
        forever nor stops the others. One ERROR line per failure; the traceback once."""
        began = now_ms()
        try:
            await work
        except RedisError:
            raise
        except Exception as exc:
            transient = _is_transient(exc)
            reason = describe(exc)
            outcome = await self.failures.failed(
                kind, queue, claim, reason, counts=not transient, conversation_id=conversation_id
            )
            extra = {"work": kind, "item": claim.member, "attempt": outcome.attempts}
            if conversation_id:
                extra["conversation_id"] = conversation_id
            first = outcome.attempts == 1 and not transient
            if outcome.parked:
                await self.bots.count("work_dead_lettered")
                log.error(
                    "%s %s parked as a dead letter after %d tries: %s",
                    kind,
                    claim.member,
                    outcome.attempts,
                    reason,
                    extra=extra,
                    exc_info=first,
                )
            else:
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "%s %s failed (try %d), tried again in %.1f s: %s",
                    kind,
                    claim.member,
                    outcome.attempts,
                    max(outcome.next_at_ms - now_ms(), 0) / 1000,
                    reason,
                    extra=extra,
                    exc_info=first,
                )
            return
        if await self.failures.succeeded(kind, claim.member, began):
            log.info("%s %s went through after failing", kind, claim.member)

    # --- webhook events -------------------------------------------------------------

    async def conversation_for(self, event: MessageEvent) -> str:
        """A conversation is identified by its lead. A chat seen before its lead (a message
        without one) is taken over by the lead that shows up in it; a chat already held by
        another lead's conversation is not: Kommo reuses chats across leads."""
        if not event.lead_id:
            known = await self.store.conversation_by_chat(event.chat_id)
            return known or envelope.conversation_id_for(event)
        known = await self.store.conversation_by_lead(event.lead_id)
        if known:
            return known
        by_chat = await self.store.conversation_by_chat(event.chat_id) if event.chat_id else None
        if by_chat and not (await self.store.conversation(by_chat)).get("lead_id"):
            return by_chat
        return envelope.conversation_id_for(event)

    async def _role(self, conversation_id: str, event: MessageEvent) -> str:
        """Who wrote it: customer, bot (the bridge's own send, echoed), automation, human,
        or command (a person's /assumir or /liberar)."""
        if event.from_customer:
            return "customer"
        if await self.store.was_sent_by_bridge(
            conversation_id, envelope.text_fingerprint(event.text)
        ):
            return "bot"
        if not bot.written_by_a_person(event.author_type):
            return "automation"
        try:
            command = bot.parse_command(
                event.text, self.settings.bot_assume_command, self.settings.bot_release_command
            )
        except InvalidInput as exc:
            log.info("malformed command in the chat, kept as a message: %s", exc)
            command = None
        # A command is for the bridge: never history for n8n, never a reply.
        return "human" if command is None else "command"

    async def _apply(
        self, conversation_id: str, stream_id: str, event: MessageEvent
    ) -> tuple[Applied, str]:
        """Record the message in the conversation; what that did, and who wrote it."""
        role = await self._role(conversation_id, event)
        at = float(event.created_at) if event.created_at else time.time()
        # The bot's replies enter the history when Kommo takes them (run_reply), so their
        # echo is not recorded again: one entry per message even when the echo is lost,
        # late or delivered twice. Everything else — the customer, a person of the team,
        # another automation — is known only from its webhook and recorded here, once per
        # message id.
        history = (
            ""
            if role == "bot"
            else json.dumps(
                envelope.history_entry(
                    role, event.text, at, message_id=event.message_id, type=event.message_type
                ),
                ensure_ascii=False,
            )
        )
        applied = await self.store.apply_message(
            conversation_id=conversation_id,
            message_id=event.message_id,
            inbox_entry=json.dumps(
                {**envelope.inbox_entry(event, stream_id), "request_id": request_id.get()},
                ensure_ascii=False,
            ),
            history_entry=history,
            at_ms=now_ms(),
            due_ms=now_ms() + int(self.settings.message_debounce_seconds * 1000),
            lead_id=event.lead_id,
            contact_id=event.contact_id,
            chat_id=event.chat_id,
            talk_id=event.talk_id,
            to_inbox=event.from_customer,
            history_max=max(self.settings.history_turns * 2, 10),
            stream_id=stream_id,
        )
        return applied, role

    async def apply_event(self, stream_id: str, event: MessageEvent) -> None:
        conversation_id = await self.conversation_for(event)
        applied, role = await self._apply(conversation_id, stream_id, event)
        if applied == Applied.OTHER_LEAD:
            # The conversation found went to another lead meanwhile (or before this
            # version kept leads apart): the lead gets its own.
            conversation_id = envelope.conversation_id_for(event)
            applied, role = await self._apply(conversation_id, stream_id, event)
        if applied == Applied.OTHER_LEAD:
            raise Conflict(f"conversation {conversation_id} belongs to another lead")
        if applied == Applied.SHARED_CHAT:
            log.warning(
                "a Kommo chat is shared by two leads; each keeps its own conversation",
                extra={"conversation_id": conversation_id, "lead_id": event.lead_id},
            )
        elif applied != Applied.APPLIED:
            return
        await self.bots.count(f"messages_{role}")
        author = event.author_name or f"usuário {event.author_id}"
        if role == "command":
            try:
                await self.bot.command(event.text, author, conversation_id, "command")
            except (NotFound, InvalidInput) as exc:
                log.info("command from the chat not applied: %s", exc)
        elif role == "human":
            await self.bot.on_person_wrote(conversation_id, author)
        elif event.from_customer and self.settings.message_debounce_seconds == 0:
            # No burst window: answer now instead of waiting for the ticker.
            claim = await self.store.turns.claim_member(conversation_id, self.settings.lease_ms)
            if claim is not None:
                # A failing turn is the turn's to retry or park, not the event's.
                await self.attempt(
                    "turn", self.store.turns, claim, self.run_turn(claim), conversation_id
                )

    async def apply_lead_event(self, event: LeadEvent) -> None:
        """A lead created or moved in Kommo may start a proactive conversation."""
        if event.kind == "add":
            trigger = self.settings.proactive_on_lead_add
        else:
            trigger = self.settings.status_triggers.get(event.status_id, "")
        if not trigger:
            return
        try:
            started = await self.proactive.start(event.lead_id, trigger)
        except InvalidInput as exc:
            # The configuration names a trigger the bridge cannot start (no template).
            log.warning("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        except (Conflict, NotFound) as exc:
            log.info("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        log.info("proactive start from Kommo", extra={"trigger": trigger, "status": started.status})

    # --- turns ----------------------------------------------------------------------

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
            if not _is_transient(exc):
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
            outbox_lease_ms=self.settings.lease_ms,
            check_after_ms=self.settings.turn_check_after_ms,
            turn_started_ms=min((int(m.get("created_at") or 0) * 1000 for m in pending), default=0)
            or now_ms(),
        )
        if committed:
            first = Claim(event_id, now_ms() + self.settings.lease_ms)
            await self.attempt(
                "n8n_delivery",
                self.store.outbox,
                first,
                self.deliver_outbox(first),
                conversation_id,
            )

    async def _build_turn(
        self, conversation: dict[str, str], pending: list[dict[str, Any]]
    ) -> tuple[str, str, str]:
        lead_id = int(conversation.get("lead_id") or 0)
        contact_id = int(conversation.get("contact_id") or 0)
        lead = await self._lead(lead_id)
        if lead is not None and not contact_id:
            contact_id = lead.main_contact_id
        contact = await self._contact(contact_id)
        vendedor = await self._vendedor(lead.responsible_user_id if lead else 0)
        messages = envelope.order_messages(pending)
        history = await self.store.history(conversation["id"], self.settings.history_turns * 2)
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

    # --- outbox to n8n ----------------------------------------------------------------

    async def deliver_outbox(self, claim: Claim) -> None:
        item = await self.store.outbox_item(claim.member)
        if not item:
            await self.store.outbox.release(claim)
            return
        with flow(item.get("request_id") or request_id.get()):
            await self._deliver_outbox(claim, item)

    async def _deliver_outbox(self, claim: Claim, item: dict[str, str]) -> None:
        rid = request_id.get()
        attempt = await self.n8n.post(item["url"], claim.member, item["payload"], rid)
        N8N_DELIVERIES.labels("ok" if attempt.ok else "retry" if attempt.retry else "refused").inc()
        failed_before = int(item.get("attempts") or 0) > 0
        if attempt.ok:
            await self.store.outbox_delivered(claim)
            if failed_before:
                await self.failures.succeeded("n8n_delivery", claim.member)
            await self.bots.count("forwarded")
            log.info("envelope delivered to n8n", extra={"event_id": claim.member})
            return
        attempts = int(item.get("attempts") or 0) + 1
        delay = next_delay(self.settings.retry_schedule, attempts) if attempt.retry else None
        next_due = None if delay is None else now_ms() + int(delay * 1000)
        await self.store.outbox_failed(claim, attempt.detail, next_due)
        await self.bots.count("dead_lettered" if next_due is None else "retried")
        if next_due is None:
            await self.failures.given_up("n8n_delivery", claim.member)
        else:
            await self.failures.retrying(
                "n8n_delivery",
                claim.member,
                OUTBOX_DUE,
                attempt.detail,
                next_due,
                item.get("conversation_id", ""),
            )
        if next_due is None:
            log.error(
                "n8n delivery parked as dead letter",
                extra={"event_id": claim.member, "attempts": attempts, "reason": attempt.detail},
            )
        else:
            log.warning(
                "n8n delivery failed, retrying",
                extra={"event_id": claim.member, "attempts": attempts, "reason": attempt.detail},
            )

    # --- replies from n8n ------------------------------------------------------------

    async def resolve_conversation(
        self, reply_token: str, conversation_id: str, lead_id: int
    ) -> tuple[str, dict[str, str]]:
        """The conversation a reply is for, and the turn its token answers (if any)."""
        if reply_token:
            turn = await self.store.reply_token(reply_token)
            if not turn:
                raise NotFound("unknown or expired reply_token")
            return turn["conversation_id"], turn
        if conversation_id:
            return conversation_id, {}
        if lead_id:
            found = await self.store.conversation_by_lead(lead_id)
            if found is None:
                # A message to a lead nobody has talked to yet (e.g. confirming an
                # agendamento): its conversation is opened, as a proactive start does.
                found = await self.proactive.open_for_lead(lead_id)
            return found, {}
        raise InvalidInput("reply_token, conversation_id or lead_id is required")

    async def send_reply(
        self,
        *,
        reply_token: str,
        conversation_id: str,
        lead_id: int,
        text: str,
        note: str,
        idempotency_key: str,
        handoff: bool = False,
        handoff_reason: str = "",
    ) -> tuple[str, str, str, int]:
        """Returns (status, conversation id, job id, lead id)."""
        if not text.strip() and not handoff:
            raise InvalidInput("text is empty")
        conversation_id, turn = await self.resolve_conversation(
            reply_token, conversation_id, lead_id
        )
        conversation = await self.store.conversation(conversation_id)
        if not conversation:
            raise NotFound(f"conversation {conversation_id} not found")
        if turn.get("request_id") and turn["request_id"] != request_id.get():
            log.info("reply to the turn of request %s", turn["request_id"])
        lead = int(conversation.get("lead_id") or 0)
        key = idempotency_key or reply_token or uuid.uuid4().hex
        seen = await self.store.reply_for_key(key)
        if seen is not None:
            previous = await self.store.reply_job(seen)
            return "duplicate", conversation_id, seen, int(previous.get("lead_id") or lead)
        if conversation.get("bot_state", "active") != "active":
            by = conversation.get("paused_by", "a person")
            raise Conflict(
                f"the conversation was taken over ({by}: {conversation.get('paused_reason', '')}); "
                "the bot's reply was not sent"
            )
        if not lead and not conversation.get("chat_id"):
            raise InvalidInput("conversation has no lead or chat to deliver to")
        job_id = uuid.uuid4().hex
        job = {
            "conversation_id": conversation_id,
            "lead_id": str(lead),
            "chat_id": conversation.get("chat_id", ""),
            "text": text,
            "note": note,
            "reply_token": reply_token,
            # The envelope this answers, kept for a resend until the reply settles it.
            "event_id": turn.get("event_id", ""),
            "idempotency_key": key,
            "state": "pending",
            "attempts": "0",
            "created_at": str(now_ms()),
            "handoff": "1" if handoff else "0",
            "handoff_reason": handoff_reason,
            "request_id": request_id.get(),
        }
        existing = await self.store.begin_reply(key, job_id, job, self.settings.lease_ms)
        if existing is not None:
            previous = await self.store.reply_job(existing)
            return "duplicate", conversation_id, existing, int(previous.get("lead_id") or lead)
        delivered = await self.run_reply(Claim(job_id, 0), job)
        return ("delivered" if delivered else "queued"), conversation_id, job_id, lead

    async def run_reply(self, claim: Claim, job: dict[str, str]) -> bool:
        """Deliver, note, settle the turn. Each step is recorded so a retry skips it."""
        with flow(job.get("request_id") or request_id.get()):
            return await self._run_reply(claim, job)

    async def _run_reply(self, claim: Claim, job: dict[str, str]) -> bool:
        conversation_id = job["conversation_id"]
        lead_id = int(job.get("lead_id") or 0)
        metadata = client_metadata()
        try:
            if job.get("delivered") != "1" and job["text"].strip():
                await self.store.remember_sent(
                    conversation_id, envelope.text_fingerprint(job["text"])
                )
                await self.gateway.DeliverMessage(
                    gw.DeliverMessageRequest(
                        lead_id=lead_id,
                        text=job["text"],
                        idempotency_key=job["idempotency_key"],
                        chat_id=job.get("chat_id", ""),
                    ),
                    timeout=_DELIVERY_DEADLINE_SECONDS,
                    metadata=metadata,
                )
                # Into the history now, when Kommo has it, rather than at its echo: an
                # echo can be lost or late, and then the next turn would not know what
                # the bot said (apply_event keeps the echo out of the history).
                await self.store.reply_delivered(
                    claim.member,
                    conversation_id,
                    envelope.history_entry("bot", job["text"], time.time()),
                    max(self.settings.history_turns * 2, 10),
                )
                await self.bots.count("messages_out")
            if job.get("noted") != "1" and lead_id and job["text"].strip():
                text = f"🤖 Resposta do assistente enviada ao cliente:\n{job['text']}"
                if job.get("note"):
                    text += f"\n\n{job['note']}"
                try:
                    await self.gateway.AddNote(
                        gw.AddNoteRequest(lead_id=lead_id, text=text), metadata=metadata
                    )
                except grpc.aio.AioRpcError as exc:
                    if _is_transient(exc):
                        raise
                    log.warning("note on lead failed: %s", exc.details())
                await self.store.update_reply_job(claim.member, noted=1)
        except Exception as exc:
            if not _is_transient(exc):
                await self.store.reply_failed(claim.member, str(exc))
                await self.store.finish_turn(
                    conversation_id, job.get("reply_token", ""), job.get("event_id", "")
                )
                raise
            attempts = int(job.get("attempts") or 0) + 1
            delay = next_delay(self.settings.retry_schedule, attempts) or 60.0
            await self.store.update_reply_job(claim.member, attempts=attempts, error=str(exc))
            await self.store.replies.reschedule(claim, now_ms() + int(delay * 1000))
            await self.failures.retrying(
                "reply",
                claim.member,
                REPLIES_DUE,
                describe(exc),
                now_ms() + int(delay * 1000),
                conversation_id,
            )
            log.warning("reply delivery failed, retrying", extra={"job": claim.member})
            return False
        await self.store.reply_done(claim)
        if int(job.get("attempts") or 0):
            await self.failures.succeeded("reply", claim.member)
        log.info("reply delivered to Kommo", extra={"conversation_id": conversation_id})
        conversation = await self.store.conversation(conversation_id)
        started = int(conversation.get("turn_started") or 0)
        if started and job.get("reply_token") == conversation.get("inflight_token"):
            await self.bots.record_reply_seconds((now_ms() - started) / 1000)
        await self.store.finish_turn(
            conversation_id, job.get("reply_token", ""), job.get("event_id", "")
        )
        if job.get("handoff") == "1":
            reason = job.get("handoff_reason") or "o assistente pediu uma pessoa"
            await self.bot.handoff(conversation_id, "assistente", reason, "handoffs_ai")
        return True


class EventConsumer(BackgroundTask):
    """Reads webhook events from the stream (consumer group), applies them, acks them.

    Entries left pending by a dead replica are reclaimed after the visibility timeout;
    an entry that keeps failing is parked after `max_event_attempts`.
    """

    name = "event-consumer"

    def __init__(self, engine: Engine, redis: aioredis.Redis) -> None:
        self.engine = engine
        self.redis = redis
        self.settings = engine.settings

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stopping: asyncio.Event) -> None:
        last_reclaim = 0.0
        while not stopping.is_set():
            try:
                await self.ensure_group()
                while not stopping.is_set():
                    if (
                        time.monotonic() - last_reclaim
                        > self.settings.visibility_timeout_seconds / 3
                    ):
                        last_reclaim = time.monotonic()
                        await self._reclaim()
                    entries = await self.redis.xreadgroup(
                        WORKERS_GROUP,
                        self.engine.consumer,
                        {EVENTS_STREAM: ">"},
                        count=self.settings.worker_batch,
                        block=500,
                    )
                    for _, items in cast(list[tuple[bytes, Any]], entries or []):
                        await self._handle_all(items)
            except RedisError as exc:
                log.warning("event consumer: redis error, retrying: %s", exc)
                await asyncio.sleep(1.0)

    async def _reclaim(self) -> None:
        idle_ms = int(self.settings.visibility_timeout_seconds * 1000)
        result = await self.redis.xautoclaim(
            EVENTS_STREAM,
            WORKERS_GROUP,
            self.engine.consumer,
            min_idle_time=idle_ms,
            start_id="0-0",
            count=self.settings.worker_batch,
        )
        items = cast(list[tuple[bytes, dict[bytes, bytes]]], result[1] if result else [])
        if items:
            log.info("reclaimed %d pending events", len(items))
            await self._handle_all(items)

    async def _handle_all(self, items: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for raw_id, fields in items:
            if not fields:  # deleted meanwhile
                continue
            stream_id = raw_id.decode()
            try:
                data = json.loads(fields[b"e"])
                with flow(data.pop("request_id", "")):
                    if data.get("kind") == "lead":
                        await self.engine.apply_lead_event(LeadEvent.from_dict(data))
                    else:
                        await self.engine.apply_event(stream_id, MessageEvent.from_dict(data))
            except Exception as exc:
                await self._failed(stream_id, fields, exc)
                continue
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(EVENTS_STREAM, WORKERS_GROUP, stream_id)
                pipe.xdel(EVENTS_STREAM, stream_id)
                pipe.hdel(
                    self.engine.failures.failing_key, WorkFailures.item_id("event", stream_id)
                )
                await pipe.execute()

    async def _failed(self, stream_id: str, fields: dict[bytes, bytes], exc: Exception) -> None:
        """Left pending, the entry is reclaimed after the visibility timeout; parked
        after MAX_EVENT_ATTEMPTS. One ERROR line per failure; the traceback once."""
        reason = describe(exc)
        visibility_ms = int(self.settings.visibility_timeout_seconds * 1000)
        outcome = await self.engine.failures.entry_failed(
            "event",
            EVENTS_STREAM,
            WORKERS_GROUP,
            stream_id,
            fields[b"e"].decode(),
            reason,
            self.settings.max_event_attempts,
            visibility_ms,
        )
        extra = {"work": "event", "item": stream_id, "attempt": outcome.attempts}
        if outcome.parked:
            await self.engine.bots.count("work_dead_lettered")
            message = f"event {stream_id} parked as a dead letter after {outcome.attempts} tries"
        else:
            message = (
                f"event {stream_id} failed (try {outcome.attempts}), tried again in about "
                f"{visibility_ms / 1000:.0f} s"
            )
        log.error("%s: %s", message, reason, extra=extra, exc_info=outcome.attempts == 1)


class DueLoop(BackgroundTask):
    """Claims due work in every replica: turns, outbox items, reply jobs, resumes,
    handoffs, proactive starts and Kommo notifications; each through `Engine.attempt`."""

    name = "due-loop"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, stopping: asyncio.Event) -> None:
        engine = self.engine
        interval = engine.settings.poll_interval_seconds
        lease = engine.settings.lease_ms
        store = engine.store
        while not stopping.is_set():
            busy = False
            try:
                for claim in await store.turns.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "turn", store.turns, claim, engine.run_turn(claim), claim.member
                    )
                for claim in await store.outbox.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "n8n_delivery", store.outbox, claim, engine.deliver_outbox(claim)
                    )
                for claim in await store.replies.claim(_MAX_CLAIM, lease):
                    busy = True
                    job = await store.reply_job(claim.member)
                    if job:
                        await engine.attempt(
                            "reply",
                            store.replies,
                            claim,
                            engine.run_reply(claim, job),
                            job.get("conversation_id", ""),
                        )
                    else:
                        await store.replies.release(claim)
                bots = engine.bots
                control = engine.bot
                for claim in await bots.resumes.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "resume", bots.resumes, claim, control.run_resume(claim), claim.member
                    )
                for claim in await bots.handoffs.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "handoff", bots.handoffs, claim, control.run_handoff(claim), claim.member
                    )
                starter = engine.proactive
                for claim in await starter.store.waiting.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "proactive_start", starter.store.waiting, claim, starter.run_waiting(claim)
                    )
                for claim in await starter.store.fallbacks.claim(_MAX_CLAIM, lease):
                    busy = True
                    await engine.attempt(
                        "proactive_fallback",
                        starter.store.fallbacks,
                        claim,
                        starter.run_fallback(claim),
                    )
                for claim in await bots.notifications.claim(_MAX_CLAIM, lease):
                    busy = True
                    job = await bots.notification(claim.member)
                    if job:
                        await engine.attempt(
                            "notification",
                            bots.notifications,
                            claim,
                            control.run_notification(claim, job),
                        )
                    else:
                        await bots.notification_done(claim.member)
            except RedisError as exc:
                log.warning("due loop: redis error: %s", exc)
                await asyncio.sleep(1.0)
            if not busy:
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=interval)
                except TimeoutError:
                    pass


class GaugeUpdater(BackgroundTask):
    """Queue depths and conversations by bot state, for Prometheus, every few seconds."""

    name = "gauges"
    _INTERVAL_SECONDS = 5.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, stopping: asyncio.Event) -> None:
        redis = self.engine.store.redis
        ops = Operations(redis, self.engine.store.retention_seconds)
        while not stopping.is_set():
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.xlen(EVENTS_STREAM)
                    pipe.zcard(self.engine.store.turns.key)
                    pipe.zcard(self.engine.store.replies.key)
                    events, turns, replies = await pipe.execute()
                outbox, dead = await ops.queue_sizes()
                work = await self.engine.failures.counts(now_ms())
                for queue, depth in (
                    ("events", events),
                    ("turns", turns),
                    ("replies", replies),
                    ("n8n_outbox", outbox),
                    ("dead_letters", dead),
                    ("work_failing", work.failing),
                    ("work_dead_letters", work.dead),
                ):
                    QUEUE_DEPTH.labels(queue).set(depth)
                rows = await ops.conversations(await ops.conversation_ids())
                for state in ("active", "paused"):
                    BOT_STATES.labels(state).set(
                        sum(1 for r in rows if r.get("bot_state", "active") == state)
                    )
            except RedisError as exc:
                log.debug("gauges not updated: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._INTERVAL_SECONDS)
            except TimeoutError:
                pass


class RetentionSweep(BackgroundTask):
    """Personal data has an end: every DATA_RETENTION_SWEEP_SECONDS, each replica erases
    what is past DATA_RETENTION_DAYS (store.Privacy.sweep). Keys expire by themselves;
    this takes their conversations out of the global indexes and queues, and removes
    data written before retention was set. Replicas sweeping at once is harmless."""

    name = "retention-sweep"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.privacy = Privacy(engine.store.redis, engine.store.retention_seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.engine.settings.data_retention_sweep_seconds
        while not stopping.is_set() and self.engine.store.retention_seconds:
            try:
                counts = await self.privacy.sweep()
                if counts:
                    log.info(
                        "personal data past its retention time erased",
                        extra={"erased": dict(counts)},
                    )
            except RedisError as exc:
                log.warning("retention sweep: redis error: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass
