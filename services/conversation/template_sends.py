"""Sending an approved WhatsApp template: what goes to a customer whose 24-hour window is
closed (window.py, templates.py).

A template goes only when it is configured for its purpose and Kommo says WhatsApp
approved it (GET /api/v4/chats/templates, through the gateway's ListTemplates, cached
there). Otherwise `TemplateUnavailable` says why: the work that needed it is kept as
failing work with that reason — retried, then parked as a dead letter an operator can
replay once the template is approved — and nothing goes out as free text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.errors import BridgeError
from services.common.grpc_server import client_metadata
from services.conversation import envelope, templates, window
from services.conversation.templates import TemplateRef

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub
    from services.conversation.rulebook import RuleBook
    from services.conversation.settings import ConversationSettings
    from services.conversation.store.bot_state import BotStore
    from services.conversation.store.conversations import ConversationStore

log = logging.getLogger(__name__)

# A conversation whose customer Kommo says never wrote is asked about again after this
# long (a message of theirs reaches the bridge by webhook anyway).
_LOOKUP_AGAIN_MS = 600_000
# A template send waits for the lead's reply slot and Kommo's budget, like a reply.
_DELIVERY_DEADLINE_SECONDS = 25.0
APPROVED = "approved"


class TemplateUnavailable(BridgeError):
    """The window is closed and no approved template can go for this purpose; `reason`
    (not_configured, not_approved, no_lead) is what /stats counts it under."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TemplateCheck:
    """Is a configured template approved by WhatsApp, as Kommo says."""

    purpose: str
    ref: TemplateRef
    status: str  # approved, review, paused, rejected, draft, missing, unknown

    @property
    def approved(self) -> bool:
        # A template configured without its id cannot be checked: trusted as configured.
        return self.status == APPROVED or self.ref.template_id is None

    def problem(self) -> str:
        return (
            f"WhatsApp template {self.ref.template_id} for {self.purpose!r} is "
            f"{self.status}, not approved: nothing is sent until it is"
        )


class TemplateSender:
    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        gateway: KommoGatewayAsyncStub,
        vendedores: VendedorServiceAsyncStub,
        rules: RuleBook,
        bots: BotStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.vendedores = vendedores
        self.rules = rules
        self.bots = bots

    async def window(self, conversation: dict[str, str], now: float) -> window.WindowState:
        """The conversation's window now. When the bridge has not seen its customer write
        (a lead opened for a proactive start or a confirmation), Kommo's events say when
        they last did (one lookup, remembered on the conversation for a while)."""
        policy = self.settings.window_policy
        lead_id = int(conversation.get("lead_id") or 0)
        looked_up = int(conversation.get("window_looked_up") or 0)
        if (
            not int(conversation.get("customer_at") or 0)
            and lead_id
            and now * 1000 - looked_up > _LOOKUP_AGAIN_MS
        ):
            answer = await self.gateway.GetLastCustomerMessage(
                gw.GetLastCustomerMessageRequest(lead_id=lead_id), metadata=client_metadata()
            )
            fields: dict[str, str | int | float] = {"window_looked_up": int(now * 1000)}
            if answer.found:
                fields["customer_at"] = int(answer.at * 1000)
                if answer.origin and not conversation.get("origin"):
                    fields["origin"] = answer.origin
            if conversation.get("id"):
                await self.store.record_decision(conversation["id"], fields)
            conversation.update({k: str(v) for k, v in fields.items()})
        return envelope.conversation_window(policy, conversation, now)

    async def statuses(self, fresh: bool = False) -> dict[int, str]:
        """Kommo's templates by id → review status ({} when Kommo cannot say)."""
        answer = await self.gateway.ListTemplates(
            gw.ListTemplatesRequest(fresh=fresh), metadata=client_metadata()
        )
        return {t.id: t.review_status or "unknown" for t in answer.templates}

    async def check_all(self, fresh: bool = False) -> list[TemplateCheck]:
        """Every configured template with its review status."""
        configured = (await self.rules.current()).rules.templates
        if not configured:
            return []
        statuses = await self.statuses(fresh)
        return [
            TemplateCheck(
                purpose,
                ref,
                APPROVED if ref.template_id is None else statuses.get(ref.template_id, "missing"),
            )
            for purpose, ref in sorted(configured.items())
        ]

    async def usable(self, purpose: str) -> TemplateRef:
        """The template to send for `purpose`, or TemplateUnavailable saying why not."""
        configured = (await self.rules.current()).rules.templates
        ref = templates.for_purpose(configured, purpose)
        if ref is None:
            raise TemplateUnavailable(
                f"WhatsApp's 24-hour window is closed and no template is configured for "
                f"{purpose!r}: add one to the bot rules' templates (PUT /bot-rules)",
                "not_configured",
            )
        if ref.template_id is not None:
            status = (await self.statuses()).get(ref.template_id, "missing")
            check = TemplateCheck(purpose, ref, status)
            if not check.approved:
                raise TemplateUnavailable(check.problem(), "not_approved")
        return ref

    async def variables(
        self, conversation: Mapping[str, str], ref: TemplateRef, given: Mapping[str, str]
    ) -> dict[str, str]:
        """The values of the template's variables: n8n's, else the bridge's own (read from
        Kommo only when the template uses them)."""
        wanted = set(ref.variables) - set(given)
        values = dict(given)
        lead_id = int(conversation.get("lead_id") or 0)
        metadata = client_metadata()
        if wanted & {"lead", "vendedor", "nome"} and lead_id:
            lead = await self.gateway.GetLead(gw.GetLeadRequest(lead_id=lead_id), metadata=metadata)
            values.setdefault("lead", lead.name)
            contact_id = int(conversation.get("contact_id") or 0) or lead.main_contact_id
            if "nome" in wanted and contact_id:
                contact = await self.gateway.GetContact(
                    gw.GetContactRequest(contact_id=contact_id), metadata=metadata
                )
                values.setdefault("nome", contact.name)
            if "vendedor" in wanted and lead.responsible_user_id:
                try:
                    vendedor = await self.vendedores.GetVendedor(
                        vd.GetVendedorRequest(vendedor_id=lead.responsible_user_id),
                        metadata=metadata,
                    )
                    values.setdefault("vendedor", vendedor.name)
                except grpc.aio.AioRpcError as exc:
                    log.info("template without the vendedor's name: %s", exc.code().name)
        return values

    async def send(
        self,
        conversation: Mapping[str, str],
        purpose: str,
        idempotency_key: str,
        given: Mapping[str, str] | None = None,
        ref: TemplateRef | None = None,
    ) -> None:
        """Write the template's fields on the lead and run its Salesbot, once per key."""
        ref = ref or await self.usable(purpose)
        lead_id = int(conversation.get("lead_id") or 0)
        if not lead_id:
            raise TemplateUnavailable(
                "a WhatsApp template goes through a lead: none known", "no_lead"
            )
        values = await self.variables(conversation, ref, given or {})
        if purpose.startswith(templates.PROACTIVE + ":"):
            values.setdefault("trigger", purpose.partition(":")[2])
        await self.gateway.DeliverMessage(
            gw.DeliverMessageRequest(
                lead_id=lead_id,
                idempotency_key=idempotency_key,
                chat_id=conversation.get("chat_id", ""),
                salesbot_id=ref.salesbot_id,
                lead_fields=templates.field_values(ref, values),
                template=True,
            ),
            timeout=_DELIVERY_DEADLINE_SECONDS,
            metadata=client_metadata(),
        )
        conversation_id = conversation.get("id", "")
        await self.store.record_history(
            conversation_id,
            envelope.history_entry(
                "bot", f"[modelo do WhatsApp: {purpose}]", time.time(), template=purpose
            ),
            max(self.settings.history_turns * 2, 10),
        )
        await self.bots.count("template_sends", conversation_id=conversation_id)
        log.info(
            "WhatsApp template sent",
            extra={"conversation_id": conversation_id, "purpose": purpose},
        )
