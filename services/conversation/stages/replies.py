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

import json
import logging
import time
import uuid

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.due_queue import Claim, describe, now_ms
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import client_metadata
from services.common.keyed_locks import KeyedLocks
from services.common.logs import flow, request_id
from services.common.n8n import next_delay
from services.common.workpool import WorkPool, leased
from services.conversation import envelope, rules, templates
from services.conversation.stages import Stage, StageContext, is_transient
from services.conversation.starter import open_for_lead
from services.conversation.store.keys import REPLIES_DUE, SENT_TTL_SECONDS
from services.conversation.store.proactive import ProactiveStore
from services.conversation.store.replies import LastPart
from services.conversation.template_sends import TemplateUnavailable

log = logging.getLogger(__name__)

# A part sent within this long of its reply's begin_reply is remembered by it (the sent
# set lives SENT_TTL_SECONDS from then); later, it is remembered again as it goes.
_REMEMBERED_BY_BEGIN_MS = SENT_TTL_SECONDS * 1000 // 2

# A delivery waits for the lead's reply slot and for Kommo's rate limit.
_DELIVERY_DEADLINE_SECONDS = 25.0


class ReplyStage(Stage):
    """Replies on their way to the customer."""

    def __init__(self, ctx: StageContext, *, handoffs: WorkPool, proactive: ProactiveStore) -> None:
        super().__init__(ctx)
        # Where a conversation is opened for a message to a lead nobody talked to yet.
        self.proactive = proactive
        # A turn's handoff-on-silence timer, forgotten when its reply settles the turn.
        self.handoffs = handoffs
        self._in_order = KeyedLocks()
        self.pool: WorkPool = ctx.pool(
            "reply", self.store.replies, self.work, self.settings.reply_concurrency
        )

    async def work(self, claim: Claim) -> None:
        job = await self.store.reply_job(claim.member)
        if not job:
            await self.store.replies.release(claim)
            return
        await self.ctx.attempt(
            "reply",
            self.store.replies,
            claim,
            self.run_reply(claim, job),
            job.get("conversation_id", ""),
        )

    async def conversation_of_lead(self, lead_id: int) -> str:
        """The conversation of a reply sent by lead, opened when the lead has none."""
        if not lead_id:
            raise InvalidInput("reply_token, conversation_id or lead_id is required")
        found = await self.store.conversation_by_lead(lead_id)
        if found is None:
            # A message to a lead nobody has talked to yet (e.g. confirming an
            # agendamento): its conversation is opened, as a proactive start does.
            found = await open_for_lead(self.gateway, self.proactive, lead_id)
        return found

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
        parts: list[str] | None = None,
        template: str = "",
        variables: dict[str, str] | None = None,
        closed_window_purpose: str = "",
    ) -> tuple[str, str, str, int]:
        """Returns (status, conversation id, job id, lead id). `parts`: n8n's own split of
        the reply, each sent as its own message (else the rules may split `text`).
        `template`: a template's purpose (with its `variables`) instead of text.
        `closed_window_purpose`: what goes instead when WhatsApp's window is closed — that
        template, and the text is dropped (a proactive start: the template is its first
        message); '' = the reopen template, and the text waits for the customer."""
        parts = [part.strip() for part in parts or [] if part.strip()]
        if template:
            if not templates.is_purpose(template):
                raise InvalidInput(
                    f"template {template[:40]!r} is not a purpose: use one the envelope's "
                    "`templates` lists (reopen, scheduling_confirmation, proactive, ...)"
                )
            if text.strip() or parts:
                raise InvalidInput("send either text (or parts) or a template, not both")
            parts = [f"[modelo do WhatsApp: {template}]"]
        if not text.strip() and not parts and not handoff:
            raise InvalidInput("text is empty")
        key = idempotency_key or reply_token or uuid.uuid4().hex
        if not reply_token and not conversation_id:
            conversation_id = await self.conversation_of_lead(lead_id)
        job = {
            "text": "",
            "parts": "",
            "pauses": "",
            "note": note,
            "reply_token": reply_token,
            "idempotency_key": key,
            "state": "pending",
            "attempts": "0",
            "created_at": str(now_ms()),
            "handoff": "1" if handoff else "0",
            "handoff_reason": handoff_reason,
            "request_id": request_id.get(),
            "template_purpose": template,
            "variables": json.dumps(variables or {}, ensure_ascii=False),
        }
        alone = parts if template else await self._unsplittable(parts or [text])
        if alone is not None:
            # Its messages do not depend on the conversation: checked and taken in one call.
            return await self._take(
                reply_token, conversation_id, key, job, alone, closed_window_purpose, template
            )
        found = await self.store.reply_context(reply_token, conversation_id, key)
        if reply_token and not found.turn:
            raise NotFound("unknown or expired reply_token")
        conversation_id, turn, conversation = found.conversation_id, found.turn, found.conversation
        if not conversation:
            raise NotFound(f"conversation {conversation_id} not found")
        if turn.get("request_id") and turn["request_id"] != request_id.get():
            log.info("reply to the turn of request %s", turn["request_id"])
        lead = int(conversation.get("lead_id") or 0)
        seen = found.seen
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
        if template:
            pauses = [0.0]
        else:
            parts, pauses = await self._pace(
                conversation, parts or ([text] if text.strip() else [])
            )
        job_id = uuid.uuid4().hex
        job = {
            **job,
            "conversation_id": conversation_id,
            "lead_id": str(lead),
            "chat_id": conversation.get("chat_id", ""),
            "text": "\n\n".join(parts),
            "parts": json.dumps(parts, ensure_ascii=False),
            "pauses": json.dumps(pauses),
            # The envelope this answers, kept for a resend until the reply settles it.
            "event_id": turn.get("event_id", ""),
            "closed_window_purpose": closed_window_purpose or turn.get("purpose", ""),
        }
        # Queued leased to this request, which delivers it now; if this replica dies,
        # the reply pool of a live one takes it when the lease runs out.
        claim = Claim(job_id, now_ms() + self.settings.lease_ms)
        existing = await self.store.begin_reply(
            key,
            job_id,
            job,
            self.settings.lease_ms,
            leased_until=claim.lease,
            # Remembered now, to recognise their echo (a template's is not echoed as text).
            fingerprints=[] if template else [envelope.text_fingerprint(p) for p in parts],
        )
        if existing is not None:
            previous = await self.store.reply_job(existing)
            return "duplicate", conversation_id, existing, int(previous.get("lead_id") or lead)
        async with leased(self.store.replies, claim, self.settings.lease_ms):
            outcome = await self.run_reply(claim, job, conversation)
        return outcome, conversation_id, job_id, lead

    async def _unsplittable(self, parts: list[str]) -> list[str] | None:
        """The messages of a reply when no bot rule can split it, whatever its conversation's
        pipeline and stage: no text (a handoff), or one text without a paragraph break,
        without spaces at its ends and no longer than any scope's `split.max_chars`; else
        None (its conversation decides, `_pace`)."""
        texts = [part for part in parts if part.strip()]
        if not texts:
            return []
        if len(texts) > 1:
            return None
        (one,) = texts
        in_force = await self.ctx.rules.current()
        if one != one.strip() or len(one) > rules.shortest_split(in_force.rules):
            return None
        return [one] if rules.split_reply(one, len(one)) == [one] else None

    async def _take(
        self,
        reply_token: str,
        conversation_id: str,
        key: str,
        job: dict[str, str],
        parts: list[str],
        closed_window_purpose: str,
        template: str,
    ) -> tuple[str, str, str, int]:
        """A reply whose messages are known: checked and its job started in one call
        (`take_reply`), as `send` does in two otherwise; then delivered."""
        job_id = uuid.uuid4().hex
        job = {
            **job,
            "text": "\n\n".join(parts),
            "parts": json.dumps(parts, ensure_ascii=False),
            "pauses": json.dumps([0.0]),
        }
        claim = Claim(job_id, now_ms() + self.settings.lease_ms)
        taken = await self.store.take_reply(
            reply_token,
            conversation_id,
            key,
            job_id,
            job,
            claim.lease,
            closed_window_purpose=closed_window_purpose,
            # Remembered now, to recognise their echo (a template's is not echoed as text).
            fingerprints=[] if template else [envelope.text_fingerprint(p) for p in parts],
        )
        conversation_id, conversation = taken.conversation_id, taken.conversation
        lead = int(conversation.get("lead_id") or 0)
        if taken.outcome == "unknown_token":
            raise NotFound("unknown or expired reply_token")
        if taken.outcome == "gone":
            raise NotFound(f"conversation {conversation_id} not found")
        if taken.turn.get("request_id") and taken.turn["request_id"] != request_id.get():
            log.info("reply to the turn of request %s", taken.turn["request_id"])
        if taken.outcome == "duplicate":
            previous = await self.store.reply_job(taken.seen)
            return "duplicate", conversation_id, taken.seen, int(previous.get("lead_id") or lead)
        if taken.outcome == "paused":
            by = conversation.get("paused_by", "a person")
            raise Conflict(
                f"the conversation was taken over ({by}: {conversation.get('paused_reason', '')}); "
                "the bot's reply was not sent"
            )
        if taken.outcome == "no_address":
            raise InvalidInput("conversation has no lead or chat to deliver to")
        job = {
            **job,
            "conversation_id": conversation_id,
            "lead_id": str(lead),
            "chat_id": conversation.get("chat_id", ""),
            "event_id": taken.turn.get("event_id", ""),
            "closed_window_purpose": closed_window_purpose or taken.turn.get("purpose", ""),
        }
        async with leased(self.store.replies, claim, self.settings.lease_ms):
            outcome = await self.run_reply(claim, job, conversation)
        return outcome, conversation_id, job_id, lead

    async def _pace(
        self, conversation: dict[str, str], parts: list[str]
    ) -> tuple[list[str], list[float]]:
        """The messages a reply goes as, and the pause before each: a long reply is split
        (at paragraphs, then at a maximum length) when the conversation's rules say so,
        and every message after the first waits as long as typing it would take."""
        in_force = await self.ctx.rules.current()
        style, _ = rules.effective(
            in_force.rules,
            int(conversation.get("pipeline_id") or 0),
            int(conversation.get("stage_id") or 0),
        )
        split = style.split
        if split.enabled and len(parts) == 1:
            parts = rules.split_reply(parts[0], split.max_chars)
        pauses = [0.0] + [rules.typing_pause(part, split) for part in parts[1:]]
        return parts, pauses

    async def run_reply(
        self, claim: Claim, job: dict[str, str], fresh: dict[str, str] | None = None
    ) -> str:
        """Deliver, note, settle the turn. Each step is recorded so a retry skips it.
        Replies to one lead go one after another, in the order they were taken.

        A reply of several messages sends the next one when its pause is over: the job
        goes back to the queue due then ("delivering"), and whichever replica claims it
        sends the next part — unless a person took the conversation over meanwhile, which
        stops the rest. "delivered" once every part is out (or stopped), "queued" when
        Kommo failed and the job is retried. `fresh`: the conversation as the request that
        took the reply just read it (not read again for the first part)."""
        lead = job.get("lead_id") or job.get("conversation_id", "")
        with flow(job.get("request_id") or request_id.get()):
            async with self._in_order.hold(lead):
                return await self._run_reply(claim, job, fresh)

    async def _run_reply(
        self, claim: Claim, job: dict[str, str], fresh: dict[str, str] | None
    ) -> str:
        conversation_id = job["conversation_id"]
        lead_id = int(job.get("lead_id") or 0)
        metadata = client_metadata()
        parts = job_parts(job)
        pauses = json.loads(job.get("pauses") or "[]")
        last: dict[str, str] | None = None  # the conversation as the last part found it
        noted = job.get("noted") == "1"
        # The last message, delivered, recorded with the reply's end (one call).
        last_part: LastPart | None = None
        try:
            sent = len(parts) if job.get("delivered") == "1" else int(job.get("parts_sent") or 0)
            while sent < len(parts):
                if sent > 0:
                    pause = float(pauses[sent]) if sent < len(pauses) else 0.0
                    due = int(job.get("last_part_at") or 0) + int(1000 * pause)
                    if now_ms() < due:
                        await self.store.replies.reschedule(claim, due)
                        return "delivering"
                # Every part, the first included: a kept reply goes back to the queue
                # long after it was accepted, and a person may have taken over since.
                # Only a reply being taken now has it in hand.
                conversation = fresh or await self.store.conversation(conversation_id)
                fresh = None
                last = conversation
                if conversation and conversation.get("bot_state", "active") != "active":
                    log.info(
                        "a person took the conversation over: %d of %d parts not sent",
                        len(parts) - sent,
                        len(parts),
                        extra={"conversation_id": conversation_id},
                    )
                    parts = parts[:sent]
                    await self.store.update_reply_job(claim.member, delivered=1, stopped_after=sent)
                    break
                if job.get("template_purpose"):
                    # n8n answered with a template: it goes whatever the window.
                    await self._deliver_template(job, conversation, claim)
                    sent = len(parts)
                    break
                window_state = await self.ctx.templates.window(conversation, time.time())
                if conversation and not window_state.open:
                    # Free text would not reach the customer (WhatsApp's 24-hour window):
                    # checked at the moment each part leaves.
                    return await self._window_closed(claim, job, conversation, parts[sent:])
                # The note rides with the last message: the gateway keeps it and adds
                # it after answering.
                note = (
                    note_text(parts, job)
                    if sent + 1 == len(parts) and lead_id and not noted
                    else ""
                )
                kept, last_part = await self._deliver_part(
                    job, parts[sent], sent, len(parts), claim, note
                )
                noted = noted or kept
                sent += 1
                job["last_part_at"] = str(now_ms())  # as reply_delivered recorded it
            if not noted and lead_id and parts:
                # A template, a reply stopped by a takeover, or a gateway that does not
                # keep notes: the note is its own call.
                text = note_text(parts, job)
                try:
                    await self.gateway.AddNote(
                        gw.AddNoteRequest(lead_id=lead_id, text=text), metadata=metadata
                    )
                except grpc.aio.AioRpcError as exc:
                    if is_transient(exc):
                        raise
                    log.warning("note on lead failed: %s", exc.details())
                # Marked noted by reply_finished below, in the same call as the rest.
        except TemplateUnavailable as exc:
            # Kept, never sent as free text: failing work with the reason, retried (the
            # template may be approved meanwhile), then a dead letter to replay.
            outcome = await self.failures.failed(
                "reply", self.store.replies, claim, str(exc), conversation_id=conversation_id
            )
            await self.bots.count(f"template_refused_{exc.reason}")
            log.warning(
                "reply not sent: %s",
                exc,
                extra={"conversation_id": conversation_id, "parked": outcome.parked},
            )
            return "waiting_for_template"
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
            log.warning(
                "reply delivery failed, retrying: %s", describe(exc), extra={"job": claim.member}
            )
            return "queued"
        conversation = await self.store.conversation(conversation_id) if last is None else last
        started = int(conversation.get("turn_started") or 0)
        token = job.get("reply_token", "")
        answers_turn = bool(token) and token == conversation.get("inflight_token")
        # n8n's answer time: from the turn's envelope ready for n8n to its reply here.
        sent_to_n8n = int(conversation.get("inflight_since") or 0)
        answered = int(job.get("created_at") or 0)
        await self.store.reply_finished(
            claim,
            conversation_id,
            token,
            job.get("event_id", ""),
            # Counted only if the token is still the turn's in flight (the script checks).
            (now_ms() - started) / 1000 if started and answers_turn else None,
            last=last_part,
            n8n_seconds=(answered - sent_to_n8n) / 1000 if sent_to_n8n and answered else None,
        )
        if answers_turn:
            self.handoffs.forget(conversation_id)  # settled: no handoff
        if int(job.get("attempts") or 0):
            await self.failures.succeeded("reply", claim.member)
        log.info("reply delivered to Kommo", extra={"conversation_id": conversation_id})
        if job.get("handoff") == "1":
            reason = job.get("handoff_reason") or "o assistente pediu uma pessoa"
            await self.bot.handoff(conversation_id, "assistente", reason, "handoffs_ai")
        return "delivered"

    async def _deliver_part(
        self,
        job: dict[str, str],
        part: str,
        index: int,
        count: int,
        claim: Claim,
        note: str = "",
    ) -> tuple[bool, LastPart | None]:
        """Send one message of a reply (the last one with the reply's `note`). Returns
        whether the gateway kept the note, and, for the last message when nothing is
        left to do before the reply's end, its record for `reply_finished` to make."""
        conversation_id = job["conversation_id"]
        if now_ms() - int(job.get("created_at") or 0) > _REMEMBERED_BY_BEGIN_MS:
            # begin_reply remembered every part; a reply kept this long (WhatsApp's window
            # closed) is remembered again, its echo may come after that memory ends.
            await self.store.remember_sent(conversation_id, envelope.text_fingerprint(part))
        # The first part keeps the reply's own key: a reply queued before replies were
        # split is recognised by the gateway as the same delivery.
        key = job["idempotency_key"] if index == 0 else f"{job['idempotency_key']}#{index + 1}"
        answer = await self.ctx.deliveries.send(
            gw.DeliverMessageRequest(
                lead_id=int(job.get("lead_id") or 0),
                text=part,
                idempotency_key=key,
                chat_id=job.get("chat_id", ""),
                note=note,
            ),
            _DELIVERY_DEADLINE_SECONDS,
        )
        kept = bool(note) and answer.note_kept
        # Into the history now, when Kommo has it, rather than at its echo: an echo can
        # be lost or late, and then the next turn would not know what the bot said
        # (apply_event keeps the echo out of the history).
        entry = envelope.history_entry("bot", part, time.time())
        cap = max(self.settings.history_turns * 2, 10)
        if index + 1 == count and (kept or not note):
            return kept, LastPart(entry, cap, index + 1, "messages_out")
        await self.store.reply_delivered(
            claim.member,
            conversation_id,
            entry,
            cap,
            parts_sent=index + 1,
            last=index + 1 == count,
            counter="messages_out",
        )
        return kept, None

    async def _window_closed(
        self,
        claim: Claim,
        job: dict[str, str],
        conversation: dict[str, str],
        left: list[str],
    ) -> str:
        """A reply (or what is left of it) found WhatsApp's window closed. It is kept:
        the reopen template asks the customer to write, and their next message puts the
        reply back (_APPLY_MESSAGE); or, with LATE_REPLY_MODE=vendedor, the vendedor gets
        it as a note and a task and takes the conversation over."""
        conversation_id = job["conversation_id"]
        text = "\n\n".join(left)
        await self.bots.count("replies_window_closed")
        if job.get("closed_window_purpose"):
            # A first message (a proactive start): its template is what the customer gets.
            purpose = job["closed_window_purpose"]
            await self.ctx.templates.send(
                conversation, purpose, f"{job['idempotency_key']}:template", {"texto": text}
            )
            await self.store.reply_done(claim)
            await self.store.finish_turn(
                conversation_id, job.get("reply_token", ""), job.get("event_id", "")
            )
            return "template_sent"
        if self.settings.late_reply_mode == "vendedor":
            await self.store.reply_done(claim)
            await self.store.finish_turn(
                conversation_id, job.get("reply_token", ""), job.get("event_id", "")
            )
            await self.bot.handoff(
                conversation_id,
                "assistente",
                "a janela de 24 h do WhatsApp fechou antes da resposta; resposta do "
                f"assistente: {text}",
                "late_replies_to_vendedor",
            )
            return "handed_to_vendedor"
        customer_at = conversation.get("customer_at", "")
        await self.ctx.templates.send(
            conversation,
            templates.REOPEN,
            # One reopen per closed window, however many replies wait behind it.
            f"reopen:{conversation_id}:{customer_at or 0}",
            {"texto": text},
        )
        if await self.store.keep_reply(claim, conversation_id, customer_at):
            await self.store.finish_turn(
                conversation_id, job.get("reply_token", ""), job.get("event_id", "")
            )
            await self.bots.count("replies_waiting_for_customer")
            log.info(
                "window closed: reopen template sent, the reply waits for the customer",
                extra={"conversation_id": conversation_id},
            )
        return "waiting_for_customer"

    async def _deliver_template(
        self, job: dict[str, str], conversation: dict[str, str], claim: Claim
    ) -> None:
        """n8n's answer was a template (and its variables) rather than text."""
        purpose = job["template_purpose"]
        await self.ctx.templates.send(
            conversation,
            purpose,
            job["idempotency_key"],
            json.loads(job.get("variables") or "{}"),
        )
        await self.store.update_reply_job(claim.member, delivered=1, parts_sent=1)


def note_text(parts: list[str], job: dict[str, str]) -> str:
    """The note a reply leaves on its lead for the salespeople: what the customer got."""
    text = "🤖 Resposta do assistente enviada ao cliente:\n" + "\n\n".join(parts)
    if job.get("note"):
        text += f"\n\n{job['note']}"
    return text


def job_parts(job: dict[str, str]) -> list[str]:
    """The messages of a reply job (one for a job queued before replies were split)."""
    if job.get("parts"):
        return [str(part) for part in json.loads(job["parts"])]
    return [job["text"]] if job.get("text", "").strip() else []
