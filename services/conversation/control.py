"""Bot control: pausing and resuming the bot for a conversation, vendedor commands,
automatic takeover and resume, handoffs to the vendedor, and the notes and tasks that
tell people about it in Kommo (durable: retried until Kommo has them)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

import grpc

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.due_queue import Claim, now_ms
from services.common.errors import InvalidInput, NotFound, is_transient_code
from services.common.grpc_server import client_metadata
from services.conversation import bot, envelope
from services.conversation.settings import ConversationSettings
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import ConversationStore

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

log = logging.getLogger(__name__)

_NOTIFY_RETRY_MS = 10_000
# What pausing or resuming did to a conversation erased meanwhile: nothing.
_ERASED = "erased"
# A handoff task is due soon: a customer is waiting for a person.
_TASK_DUE_SECONDS = 15 * 60


class BotController:
    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        bots: BotStore,
        gateway: KommoGatewayAsyncStub,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bots = bots
        self.gateway = gateway

    # --- finding the conversation -----------------------------------------------------

    async def find(self, ref: pb.ConversationRef) -> str:
        if ref.conversation_id:
            if not await self.store.conversation(ref.conversation_id):
                raise NotFound(f"conversation {ref.conversation_id} not found")
            return ref.conversation_id
        if ref.lead_id:
            found = await self.store.conversation_by_lead(ref.lead_id)
            if found is None:
                raise NotFound(f"no conversation for lead {ref.lead_id}")
            return found
        if ref.contact_id:
            found = await self.store.conversation_by_contact(ref.contact_id)
            if found is None:
                raise NotFound(f"no conversation for contact {ref.contact_id}")
            return found
        raise InvalidInput("conversation_id, lead_id or contact_id is required")

    async def status(self, conversation_id: str, outcome: str = "") -> pb.BotStatus:
        data = await self.store.conversation(conversation_id)
        history = await self.bots.log(conversation_id)
        # From what the conversation holds: no call to Kommo for a status.
        window = envelope.conversation_window(self.settings.window_policy, data, time.time())
        return pb.BotStatus(
            conversation_id=conversation_id,
            lead_id=int(data.get("lead_id") or 0),
            bot_state=data.get("bot_state", bot.ACTIVE),
            paused_by=data.get("paused_by", ""),
            paused_reason=data.get("paused_reason", ""),
            paused_at=int(data.get("paused_at") or 0) / 1000,
            resumes_at=int(data.get("resumes_at") or 0) / 1000,
            history=[
                pb.BotChange(state=h["state"], by=h["by"], reason=h["reason"], at=h["at"])
                for h in history
            ],
            outcome=outcome,
            decision=decision_of(data),
            window_open=window.open,
            window_open_until=window.open_until or 0.0,
        )

    # --- pausing and resuming ---------------------------------------------------------

    def _resumes_at(self, pause_seconds: float = 0.0) -> int:
        seconds = pause_seconds or self.settings.bot_auto_resume_after
        return now_ms() + int(seconds * 1000) if seconds else 0

    async def pause(
        self,
        conversation_id: str,
        by: str,
        reason: str,
        counter: str,
        pause_seconds: float = 0.0,
    ) -> str:
        resumes_at = self._resumes_at(pause_seconds)
        previous = await self.bots.set_state(
            conversation_id, bot.PAUSED, by, reason, resumes_at, counter
        )
        if previous is None:
            return _ERASED
        if previous == bot.PAUSED:
            return "unchanged"
        when = (
            time.strftime("%d/%m %H:%M UTC", time.gmtime(resumes_at / 1000))
            if resumes_at
            else "quando alguém usar " + self.settings.bot_release_command
        )
        await self.notify(
            conversation_id,
            f"⏸️ Assistente pausado nesta conversa por {by}: {reason}. Volta a responder {when}.",
        )
        log.info("bot paused", extra={"conversation_id": conversation_id, "reason": reason})
        return "paused"

    async def resume(self, conversation_id: str, by: str, reason: str, counter: str) -> str:
        previous = await self.bots.set_state(conversation_id, bot.ACTIVE, by, reason, 0, counter)
        if previous is None:
            return _ERASED
        if previous == bot.ACTIVE:
            return "unchanged"
        await self.notify(
            conversation_id, f"▶️ Assistente reativado nesta conversa por {by}: {reason}."
        )
        log.info("bot resumed", extra={"conversation_id": conversation_id, "reason": reason})
        return "resumed"

    async def handoff(self, conversation_id: str, by: str, reason: str, counter: str) -> None:
        """The customer needs a person: pause, settle the turn, tell the vendedor."""
        paused = await self.bots.set_state(
            conversation_id, bot.PAUSED, by, reason, self._resumes_at(), counter, count_always=True
        )
        if paused is None:
            log.info("handoff skipped: the conversation was erased")
            return
        await self.store.clear_inflight(conversation_id)
        await self.notify(
            conversation_id,
            f"🙋 O cliente está aguardando atendimento humano ({reason}). "
            "O assistente foi pausado nesta conversa.",
            task=f"Cliente aguardando atendimento humano: {reason}",
        )
        log.info("handed off to the vendedor", extra={"conversation_id": conversation_id})

    async def on_person_wrote(self, conversation_id: str, author: str) -> None:
        """Any message from a person of the team takes the conversation over."""
        data = await self.store.conversation(conversation_id)
        if data.get("bot_state", bot.ACTIVE) == bot.PAUSED:
            resumes_at = self._resumes_at()
            if resumes_at and data.get("resumes_at", "0") != "0":
                await self.bots.push_resume(conversation_id, resumes_at)
            return
        await self.pause(conversation_id, author, "uma pessoa respondeu no chat", "takeovers_auto")

    async def command(
        self, text: str, by: str, conversation_id: str, counter_suffix: str
    ) -> pb.BotStatus | None:
        """Apply `/assumir` or `/liberar`; None when the text is not a command."""
        command = bot.parse_command(
            text, self.settings.bot_assume_command, self.settings.bot_release_command
        )
        if command is None:
            return None
        await self.bots.count("commands")
        if command.lead_id:
            target = await self.find(pb.ConversationRef(lead_id=command.lead_id))
        elif conversation_id:
            target = conversation_id
        else:
            raise InvalidInput("which lead? e.g. /assumir 9100001")
        if command.action == "pause":
            outcome = await self.pause(
                target,
                by,
                f"{self.settings.bot_assume_command} de {by}",
                f"takeovers_{counter_suffix}",
            )
        else:
            outcome = await self.resume(
                target,
                by,
                f"{self.settings.bot_release_command} de {by}",
                f"resumes_{counter_suffix}",
            )
        return await self.status(target, outcome)

    async def run_resume(self, claim: Claim) -> None:
        data = await self.store.conversation(claim.member)
        resumes_at = int(data.get("resumes_at") or 0)
        if data.get("bot_state") == bot.PAUSED and resumes_at and resumes_at <= now_ms():
            quiet = int(self.settings.bot_auto_resume_after)
            await self.resume(
                claim.member, "assistente", f"{quiet} s sem mensagens da equipe", "resumes_auto"
            )
        await self.bots.resumes.release(claim)

    async def run_handoff(self, claim: Claim) -> None:
        """A turn n8n has not answered: past the reply timeout its envelope goes to n8n
        again; past the handoff limit the customer goes to the vendedor."""
        data = await self.store.conversation(claim.member)
        since = int(data.get("inflight_since") or 0)
        if data.get("bot_state", bot.ACTIVE) != bot.ACTIVE or not since:
            await self.bots.handoffs.release(claim)
            return
        now = now_ms()
        handoff_ms = int(self.settings.bot_handoff_after * 1000)
        resend_ms = int(self.settings.bot_reply_timeout * 1000)
        if handoff_ms and now - since >= handoff_ms:
            await self.handoff(
                claim.member,
                "assistente",
                f"o n8n não respondeu em {int(self.settings.bot_handoff_after)} s",
                "handoffs_timeout",
            )
            await self.bots.handoffs.release(claim)
            return
        event_id = data.get("inflight_event", "")
        if resend_ms and event_id and await self.store.resend(event_id):
            await self.bots.count("resent_to_n8n")
            log.warning(
                "no reply from n8n in %d s: envelope sent again",
                (now - since) // 1000,
                extra={"conversation_id": claim.member, "event_id": event_id},
            )
        checks = [now + resend_ms] if resend_ms else []
        if handoff_ms:
            checks.append(since + handoff_ms)
        if checks:
            await self.bots.handoffs.reschedule(claim, min(checks))
        else:
            await self.bots.handoffs.release(claim)

    # --- notes and tasks in Kommo -------------------------------------------------------

    async def notify(self, conversation_id: str, note: str, task: str = "") -> None:
        data = await self.store.conversation(conversation_id)
        lead_id = int(data.get("lead_id") or 0)
        if not lead_id:
            return
        job_id = uuid.uuid4().hex
        job = {"lead_id": str(lead_id), "note": note, "task": task}
        if await self.bots.add_notification(job_id, job, self.settings.lease_ms, conversation_id):
            await self.run_notification(Claim(job_id, 0), job)

    async def run_notification(self, claim: Claim, job: dict[str, str]) -> None:
        lead_id = int(job["lead_id"])
        metadata = client_metadata()
        try:
            if job.get("note") and job.get("noted") != "1":
                await self.gateway.AddNote(
                    gw.AddNoteRequest(lead_id=lead_id, text=job["note"]), metadata=metadata
                )
                job["noted"] = "1"
                await self.bots.mark_noted(claim.member)
            if job.get("task"):
                lead = await self.gateway.GetLead(
                    gw.GetLeadRequest(lead_id=lead_id), metadata=metadata
                )
                await self.gateway.AddTask(
                    gw.AddTaskRequest(
                        lead_id=lead_id,
                        text=job["task"],
                        responsible_user_id=lead.responsible_user_id,
                        complete_till=int(time.time()) + _TASK_DUE_SECONDS,
                    ),
                    metadata=metadata,
                )
        except grpc.aio.AioRpcError as exc:
            if is_transient_code(exc.code()):
                log.warning("Kommo note/task failed, retrying: %s", exc.details())
                await self.bots.notifications.reschedule(claim, now_ms() + _NOTIFY_RETRY_MS)
                return
            log.error("Kommo refused a note/task: %s", exc.details())
        await self.bots.notification_done(claim.member)


def decision_of(conversation: dict[str, str]) -> pb.BotDecision:
    """The bot rules' last decision on a conversation, as its turn recorded it."""
    return pb.BotDecision(
        action=conversation.get("decision", ""),
        reason=conversation.get("decision_reason", ""),
        rule=conversation.get("decision_rule", ""),
        at=int(conversation.get("decision_at") or 0) / 1000,
        rules_version=int(conversation.get("decision_rules_version") or 0),
    )
