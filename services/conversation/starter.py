"""Starting proactive conversations: once per lead and trigger, only for the vendedor's
areas, within working hours, with n8n's first message or the template."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.due_queue import Claim, now_ms
from services.common.envelopes import CONVERSATION_PROACTIVE
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import client_metadata
from services.common.n8n import new_event_id
from services.conversation import envelope, proactive_policy, templates
from services.conversation.store.proactive import ProactiveStore

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from services.conversation.stages import StageContext
    from services.conversation.stages.replies import ReplyStage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Started:
    conversation_id: str
    created: bool
    status: str  # "sent", "awaiting_n8n", "scheduled", "existing", "customer_wrote"
    scheduled_for: float  # Unix seconds; 0 = now


class ProactiveStarter:
    def __init__(
        self,
        ctx: StageContext,
        store: ProactiveStore,
        *,
        replies: ReplyStage,
        envelope_due: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.conversations = ctx.store
        # The template goes out as a reply; n8n's first message as an envelope due now.
        self.replies = replies
        self.envelope_due = envelope_due
        self.store = store
        self._file_templates = dict(proactive_policy.DEFAULT_TEMPLATES)
        if self.settings.proactive_templates_file:
            loaded = json.loads(Path(self.settings.proactive_templates_file).read_text())
            for trigger, text in loaded.items():
                self._file_templates[proactive_policy.check_trigger(trigger)] = (
                    proactive_policy.check_template(text)
                )

    async def templates(self) -> dict[str, str]:
        return {**self._file_templates, **await self.store.templates()}

    async def template(self, trigger: str) -> str:
        """The trigger's template. A trigger is known by its template: the template is
        what goes out when n8n is not used or stays silent, so a trigger without one
        (often a typo) could never be sure to send anything — refused before anything is
        claimed or scheduled."""
        templates = await self.templates()
        if trigger not in templates:
            raise InvalidInput(
                f"trigger {trigger!r} has no message template: add one with "
                f"PUT /proactive/templates/{trigger} or in PROACTIVE_TEMPLATES_FILE "
                f"(triggers with a template: {', '.join(sorted(templates))})"
            )
        return templates[trigger]

    async def set_template(self, trigger: str, text: str) -> None:
        await self.store.set_template(
            proactive_policy.check_trigger(trigger), proactive_policy.check_template(text)
        )

    async def start(self, lead_id: int, trigger: str, *, only_if_silent: bool = False) -> Started:
        """Start a proactive conversation. `only_if_silent` (a lead Kommo just created)
        waits PROACTIVE_LEAD_ADD_DELAY_SECONDS and goes only if the customer has not
        written meanwhile."""
        proactive_policy.check_trigger(trigger)
        if lead_id <= 0:
            raise InvalidInput("lead_id must be a positive integer")
        await self.template(trigger)
        conversation_id = await self.conversations.conversation_by_lead(
            lead_id
        ) or envelope.conversation_for_lead(lead_id)
        ttl = int(self.settings.proactive_dedupe_seconds)
        claimed = await self.store.claim_start(lead_id, trigger, conversation_id, ttl)
        if claimed is not None:
            # Already started: when it still waits for working hours, say when it goes.
            return Started(
                conversation_id, False, "existing", claimed if claimed > time.time() else 0.0
            )
        try:
            return await self._start(lead_id, trigger, conversation_id, only_if_silent)
        except Exception:
            # Nothing went out: a later attempt may try again.
            await self.store.forget_start(lead_id, trigger)
            raise

    async def _start(
        self, lead_id: int, trigger: str, conversation_id: str, only_if_silent: bool
    ) -> Started:
        metadata = client_metadata()
        lead = await read_lead(self.ctx.gateway, lead_id)
        try:
            vendedor = await self.ctx.vendedores.GetVendedorForLead(
                vd.GetVendedorForLeadRequest(lead_id=lead_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Conflict(f"no vendedor for lead {lead_id}: {exc.details()}") from exc
            raise
        area = proactive_policy.lead_area(
            list(lead.custom_fields), self.settings.proactive_area_field
        )
        proactive_policy.check_eligible(area, vendedor.name, list(vendedor.areas))
        conversation = await self.store.ensure_conversation(
            conversation_id,
            lead_id,
            lead.main_contact_id,
            trigger,
            (lead.responsible_user_id, lead.pipeline_id, lead.status_id),
        )
        if conversation.get("bot_state", "active") != "active":
            raise Conflict("a person is handling this conversation: no proactive message")
        if only_if_silent and _customer_wrote(conversation):
            return Started(conversation_id, True, "customer_wrote", 0.0)
        now = datetime.now(UTC)
        opens = self.settings.working_hours.next_open(now)
        job = {
            "conversation_id": conversation_id,
            "lead_id": str(lead_id),
            "trigger": trigger,
        }
        if only_if_silent:
            job["only_if_silent"] = "1"
            opens = max(
                opens, now + timedelta(seconds=self.settings.proactive_lead_add_delay_seconds)
            )
        if opens > now:
            job_id = uuid.uuid4().hex
            at_ms = int(opens.timestamp() * 1000)
            await self.store.add_job(self.store.waiting, job_id, job, at_ms)
            await self.store.start_scheduled(lead_id, trigger, conversation_id, at_ms)
            log.info("proactive start waits for working hours", extra=job)
            return Started(conversation_id, True, "scheduled", opens.timestamp())
        status = await self.send(conversation_id, lead_id, trigger, only_if_silent)
        return Started(conversation_id, True, status, 0.0)

    async def send(
        self, conversation_id: str, lead_id: int, trigger: str, only_if_silent: bool = False
    ) -> str:
        """The first message: n8n's, or the template when n8n is not used or silent."""
        ctx = self.ctx
        if only_if_silent and _customer_wrote(
            await self.conversations.conversation(conversation_id)
        ):
            log.info(
                "the customer wrote first: no proactive start",
                extra={"conversation_id": conversation_id, "trigger": trigger},
            )
            await ctx.bots.count("proactive_skipped_customer_wrote")
            return "customer_wrote"
        metadata = client_metadata()
        lead = await ctx.gateway.GetLead(gw.GetLeadRequest(lead_id=lead_id), metadata=metadata)
        vendedor = await ctx.vendedores.GetVendedorForLead(
            vd.GetVendedorForLeadRequest(lead_id=lead_id), metadata=metadata
        )
        contact = None
        if lead.main_contact_id:
            contact = await ctx.gateway.GetContact(
                gw.GetContactRequest(contact_id=lead.main_contact_id), metadata=metadata
            )
        text = proactive_policy.render(
            await self.template(trigger),
            contact.name if contact else "",
            lead.name,
            vendedor.name,
        )
        conversation = await self.conversations.conversation(conversation_id)
        # The envelope says whether free text can reach this customer (Kommo is asked
        # when the bridge has not seen them write).
        await ctx.templates.window(conversation, time.time())
        url = self.settings.proactive_webhook_url
        if not (self.settings.proactive_via_n8n and url) or conversation.get("inflight_token"):
            await self._send_template(conversation_id, trigger, text, reply_token="")
            return "sent"
        reply_token = uuid.uuid4().hex
        event_id = new_event_id()
        body = envelope.message_envelope(
            event_id=event_id,
            conversation={
                "id": conversation_id,
                "lead_id": lead_id,
                "contact_id": lead.main_contact_id or None,
                "chat_id": conversation.get("chat_id"),
                "talk_id": None,
                "bot_state": conversation.get("bot_state", "active"),
                **envelope.window_json(self.settings.window_policy, conversation, time.time()),
            },
            lead=envelope.lead_json(
                lead,
                lead_id,
                reply_field_id=self.settings.kommo_reply_field_id,
                lead_fields=self.settings.lead_fields,
            ),
            contact=envelope.contact_json(
                contact, lead.main_contact_id, self.settings.contact_disclosure
            ),
            vendedor=envelope.vendedor_json(vendedor),
            messages=[],
            history=[],
            callback_url=self.settings.callback_url,
            reply_token=reply_token,
            occurred_at=time.time(),
            templates=envelope.templates_json((await ctx.rules.current()).rules.templates),
            event=CONVERSATION_PROACTIVE,
            trigger=trigger,
        )
        committed = await self.conversations.commit_turn(
            conversation_id=conversation_id,
            claim=Claim(conversation_id, -1),
            consumed=0,
            reply_token=reply_token,
            event_id=event_id,
            payload=json.dumps(body, ensure_ascii=False),
            url=url,
            check_after_ms=0,
            turn_started_ms=now_ms(),
            purpose=templates.proactive_purpose(trigger),
        )
        if not committed:
            raise Conflict("the conversation changed while starting it; try again")
        due = now_ms() + int(self.settings.proactive_n8n_timeout_seconds * 1000)
        await self.store.add_job(
            self.store.fallbacks,
            reply_token,
            {"conversation_id": conversation_id, "trigger": trigger, "text": text},
            due,
        )
        self.envelope_due()
        return "awaiting_n8n"

    async def _send_template(
        self, conversation_id: str, trigger: str, text: str, reply_token: str
    ) -> None:
        await self.replies.send(
            reply_token=reply_token,
            conversation_id="" if reply_token else conversation_id,
            lead_id=0,
            text=text,
            note=f"Mensagem proativa ({trigger}), modelo do bridge.",
            idempotency_key=reply_token or f"proactive:{conversation_id}:{trigger}:{now_ms()}",
            closed_window_purpose=templates.proactive_purpose(trigger),
        )

    async def run_waiting(self, claim: Claim) -> None:
        job = await self.store.job(claim.member)
        if job:
            try:
                await self.send(
                    job["conversation_id"],
                    int(job["lead_id"]),
                    job["trigger"],
                    job.get("only_if_silent") == "1",
                )
            # Kommo or the vendedor service failing: StageContext.attempt retries it with
            # backoff, and parks it as a dead letter if it keeps failing.
            except (InvalidInput, NotFound, Conflict) as exc:
                # Trying again cannot help (e.g. its template is gone since it was
                # scheduled): dropped, and a later start of this lead and trigger may go.
                log.error(
                    "proactive start dropped: %s",
                    exc,
                    extra={"lead_id": job["lead_id"], "trigger": job["trigger"]},
                )
                await self.store.forget_start(int(job["lead_id"]), job["trigger"])
        await self.store.job_done(self.store.waiting, claim.member)

    async def run_fallback(self, claim: Claim) -> None:
        """n8n did not write the first message in time: the template goes instead. The
        reply token is the idempotency key, so a late answer from n8n is a duplicate."""
        job = await self.store.job(claim.member)
        if job:
            conversation = await self.conversations.conversation(job["conversation_id"])
            if conversation.get("inflight_token") == claim.member:
                log.info("n8n silent on a proactive start: sending the template")
                await self._send_template(
                    job["conversation_id"], job["trigger"], job["text"], claim.member
                )
        await self.store.job_done(self.store.fallbacks, claim.member)


def _customer_wrote(conversation: dict[str, str]) -> bool:
    """The customer has written in this conversation (the apply script stamps it)."""
    return bool(conversation.get("customer_at"))


async def read_lead(gateway: KommoGatewayAsyncStub, lead_id: int) -> gw.Lead:
    """The lead as Kommo has it (through the gateway); NotFound when Kommo has none."""
    try:
        return await gateway.GetLead(gw.GetLeadRequest(lead_id=lead_id), metadata=client_metadata())
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"lead {lead_id} not found in Kommo") from exc
        raise


async def open_for_lead(gateway: KommoGatewayAsyncStub, store: ProactiveStore, lead_id: int) -> str:
    """The conversation of a lead that has none yet, opened with the lead's main
    contact as Kommo knows it — for a message the bridge sends first (a confirmation
    sent through /send-response with lead_id). Its id is the lead's deterministic
    one, so two replicas opening it at once open the same conversation."""
    lead = await read_lead(gateway, lead_id)
    conversation_id = envelope.conversation_for_lead(lead_id)
    await store.ensure_conversation(conversation_id, lead_id, lead.main_contact_id)
    log.info(
        "conversation opened for a message to a new lead",
        extra={"conversation_id": conversation_id, "lead_id": lead_id},
    )
    return conversation_id
