"""Stage 4, replies: n8n's answers (and the bridge's own templates) delivered to the
customer through the Kommo gateway, noted on the lead, and settling their turn.

A reply is delivered inside the request that brings it when it can (its job queued
leased to that request, the lease renewed while Kommo answers). Otherwise — the request's
replica died, Kommo was unavailable — the reply pool (REPLY_CONCURRENCY slots) claims it
from `conv:replies:due`. A delivery may wait for Kommo's rate limit and the lead's reply
slot (the gateway keeps one reply per lead in Kommo's field at a time): it holds a reply
slot, never a turn or an envelope. Replies to one lead keep their order in a replica
(`_in_order`, first come first served) and across replicas through the gateway's lead
slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.due_queue import Claim, describe, now_ms
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import client_metadata
from services.common.logs import flow, request_id
from services.common.n8n import next_delay
from services.common.workpool import WorkPool, leased
from services.conversation import envelope
from services.conversation.stages import Stage, is_transient
from services.conversation.store import REPLIES_DUE

if TYPE_CHECKING:
    from services.conversation.engine import Engine

log = logging.getLogger(__name__)

# A delivery waits for the lead's reply slot and for Kommo's rate limit.
_DELIVERY_DEADLINE_SECONDS = 25.0


class KeyedLocks:
    """One FIFO lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class ReplyStage(Stage):
    """Replies on their way to the customer."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._in_order = KeyedLocks()
        self.pool: WorkPool = engine.pool(
            "reply", self.store.replies, self.work, self.settings.reply_concurrency
        )

    async def work(self, claim: Claim) -> None:
        job = await self.store.reply_job(claim.member)
        if not job:
            await self.store.replies.release(claim)
            return
        await self.engine.attempt(
            "reply",
            self.store.replies,
            claim,
            self.run_reply(claim, job),
            job.get("conversation_id", ""),
        )

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

    async def send(
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
        # Queued leased to this request, which delivers it now; if this replica dies,
        # the reply pool of a live one takes it when the lease runs out.
        claim = Claim(job_id, now_ms() + self.settings.lease_ms)
        existing = await self.store.begin_reply(
            key, job_id, job, self.settings.lease_ms, leased_until=claim.lease
        )
        if existing is not None:
            previous = await self.store.reply_job(existing)
            return "duplicate", conversation_id, existing, int(previous.get("lead_id") or lead)
        async with leased(self.store.replies, claim, self.settings.lease_ms):
            delivered = await self.run_reply(claim, job)
        return ("delivered" if delivered else "queued"), conversation_id, job_id, lead

    async def run_reply(self, claim: Claim, job: dict[str, str]) -> bool:
        """Deliver, note, settle the turn. Each step is recorded so a retry skips it.
        Replies to one lead go one after another, in the order they were taken."""
        lead = job.get("lead_id") or job.get("conversation_id", "")
        with flow(job.get("request_id") or request_id.get()):
            async with self._in_order.hold(lead):
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
                    if is_transient(exc):
                        raise
                    log.warning("note on lead failed: %s", exc.details())
                await self.store.update_reply_job(claim.member, noted=1)
        except Exception as exc:
            if not is_transient(exc):
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
