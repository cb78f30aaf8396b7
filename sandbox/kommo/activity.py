"""What happens in the account's chats and is told to the bridge by webhook: customers and
vendedores writing, the Salesbot sending the reply field, template Salesbots, Chats API sends,
lead events.

WhatsApp's 24-hour window is enforced when a message would reach the customer (the bot's run
or the Chats API's delivery, not the request): free text from the reply Salesbot or the Chats
API into a windowed chat whose window is closed is recorded in the chat with
``delivered=False``, ``failure="outside_24h_window"`` and listed in ``closed_window_sends``;
its event and echo webhook are published as for any message (Kommo shows it, failed, in the
chat). A template Salesbot sends its WhatsApp template, markers filled at run time, at any
time — but only when the template is approved (else the run's outcome is
``template_not_approved`` and nothing reaches the chat); Kommo's own (``amocrm``) template is
free text, held to the window. Only a customer's message opens the window. See whatsapp.py.

A lead or contact edited through the API (``PATCH /api/v4/leads``, ``/contacts``) is told as
Kommo tells it, a moment after the answer: ``leads[update]`` (``update_lead``), and
``leads[responsible]`` (``responsible_lead``) when its responsible user changed; likewise
``contacts[update]`` and ``contacts[responsible]``. Those go only to the hooks subscribed to
them (``POST /api/v4/webhooks``): the configured bridge URL stands for a hook made in Kommo's
settings with the chat and lead events (``add_message``, ``add_lead``, ``status_lead``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.custom_fields import CustomFieldDef, FieldValues
from sandbox.kommo.records import (
    INCOMING_CHAT_MESSAGE,
    Attachment,
    ChatMessage,
    ChatTemplate,
    Contact,
    Lead,
    User,
)
from sandbox.kommo.responses import JsonDict
from sandbox.kommo.state import AccountState
from sandbox.kommo.webhooks import (
    AccountRef,
    ContactHook,
    CustomFieldHook,
    LeadHook,
    MessageHook,
    WebhookDelivery,
    WebhookSender,
    contact_event_body,
    lead_event_body,
    message_add_body,
)
from sandbox.kommo.whatsapp import OUTSIDE_WINDOW, chat_window, fill_markers

logger = logging.getLogger(__name__)

MESSAGE_SETTING = "add_message"
LEAD_SETTINGS = {
    "add": "add_lead",
    "status": "status_lead",
    "update": "update_lead",
    "responsible": "responsible_lead",
}
CONTACT_SETTINGS = {"update": "update_contact", "responsible": "responsible_contact"}
INCOMING_EVENT = INCOMING_CHAT_MESSAGE
OUTGOING_EVENT = "outgoing_chat_message"
_BOT_NAMESPACE = uuid.UUID("0b6f3f43-8d4c-4f0e-9d55-7a1c2e9b5d10")


@dataclass
class SalesbotRun:
    """One bot run on one lead; ``outcome`` is pending, sent, empty_field, unknown_lead,
    unknown_bot, template_not_approved or stopped. A sent run's message may still be refused by the
    channel: ``delivered`` False and ``failure`` say so. ``template_id``: a template bot's."""

    seq: int
    bot_id: int
    lead_id: int
    requested_at: float
    outcome: str = "pending"
    executed_at: float | None = None
    message_id: str | None = None
    text: str | None = None
    delivered: bool | None = None
    failure: str | None = None
    template_id: int | None = None

    def as_json(self) -> JsonDict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClosedWindowSend:
    """Free text sent into a closed 24-hour window: WhatsApp did not deliver it."""

    lead_id: int
    text: str
    via: str
    at: float
    origin: str
    message_id: str

    def as_json(self) -> JsonDict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Notified:
    """A webhook body and what became of its deliveries."""

    body: str
    deliveries: list[WebhookDelivery]

    @property
    def bridge_status(self) -> int | None:
        return self.deliveries[0].status if self.deliveries else None


class AccountActivity:
    def __init__(self, config: SandboxConfig, state: AccountState, webhooks: WebhookSender) -> None:
        self._config = config
        self._state = state
        self._webhooks = webhooks
        self._tasks: set[asyncio.Task[None]] = set()
        self.salesbot_runs: list[SalesbotRun] = []
        self.chats_api_sends = 0
        self.template_sends = 0
        self.closed_window_sends: list[ClosedWindowSend] = []

    @property
    def account(self) -> AccountRef:
        return AccountRef(self._config.subdomain, self._config.account_id)

    def knows_bot(self, bot_id: int) -> bool:
        """The reply bot, or a Salesbot that holds one of the account's templates."""
        return bot_id == self._config.salesbot_id or self._state.template_of_bot(bot_id) is not None

    def webhook_targets(self, setting: str) -> list[str]:
        """The configured bridge URL, then every enabled API subscription to ``setting``."""
        urls = [self._config.bridge_webhook_url] if self._config.bridge_webhook_url else []
        return urls + [url for url in self.subscribers(setting) if url not in urls]

    def subscribers(self, setting: str) -> list[str]:
        """Every enabled API subscription to ``setting``, once each."""
        urls: list[str] = []
        for subscription in self._state.subscriptions:
            if (
                not subscription.disabled
                and setting in subscription.settings
                and subscription.destination not in urls
            ):
                urls.append(subscription.destination)
        return urls

    async def customer_writes(
        self, lead: Lead, text: str, message_type: str, attachment: Attachment | None
    ) -> tuple[ChatMessage, Notified]:
        contact = self._state.contacts.get(lead.main_contact_id or 0)
        message = ChatMessage(
            id=str(uuid.uuid4()),
            lead_id=lead.id,
            direction="incoming",
            author_type="external",
            author_id=contact.amojo_id if contact else str(uuid.uuid4()),
            author_name=contact.name if contact else "Cliente",
            text=text,
            at=time.time(),
            via="customer",
            message_type=message_type,
            attachment=attachment,
        )
        # The customer's message (re)opens WhatsApp's 24-hour window.
        lead.customer_last_wrote_at = message.at
        return message, await self._publish(lead, message, INCOMING_EVENT)

    async def user_writes(self, lead: Lead, user: User, text: str) -> tuple[ChatMessage, Notified]:
        message = ChatMessage(
            id=str(uuid.uuid4()),
            lead_id=lead.id,
            direction="outgoing",
            author_type="user",
            author_id=str(user.id),
            author_name=user.name,
            text=text,
            at=time.time(),
            via="user",
        )
        return message, await self._publish(lead, message, OUTGOING_EVENT, created_by=user.id)

    def run_salesbot(self, bot_id: int, lead_id: int) -> SalesbotRun:
        run = SalesbotRun(
            seq=len(self.salesbot_runs) + 1,
            bot_id=bot_id,
            lead_id=lead_id,
            requested_at=time.time(),
        )
        self.salesbot_runs.append(run)
        self._spawn(self._execute_run(run))
        return run

    def stop_salesbot(self, bot_id: int, lead_id: int | None) -> int:
        stopped = 0
        for run in self.salesbot_runs:
            if run.outcome == "pending" and run.bot_id == bot_id and lead_id in (None, run.lead_id):
                run.outcome = "stopped"
                stopped += 1
        return stopped

    async def _execute_run(self, run: SalesbotRun) -> None:
        await asyncio.sleep(self._config.echo_delay)
        if run.outcome != "pending":
            return
        run.executed_at = time.time()
        lead = self._state.leads.get(run.lead_id)
        if lead is None:
            run.outcome = "unknown_lead"
            return
        if run.bot_id != self._config.salesbot_id:
            template = self._state.template_of_bot(run.bot_id)
            if template is None:
                run.outcome = "unknown_bot"
            else:
                await self._send_template(run, lead, template)
            return
        # Read when the bot runs, not when it was asked to: a PATCH in between wins.
        text = lead.field_text(self._config.reply_field_id)
        if not text:
            run.outcome = "empty_field"
            logger.info("salesbot run %d on lead %d: reply field empty", run.seq, lead.id)
            return
        await self._bot_sends(run, lead, self._through_window(lead, _bot_message(run, lead, text)))

    async def _send_template(self, run: SalesbotRun, lead: Lead, template: ChatTemplate) -> None:
        """A WhatsApp template goes out at any time, window or not, when Meta approved it;
        Kommo's own (``amocrm``) template is canned free text, held to the window."""
        run.template_id = template.id
        whatsapp = template.type == "waba"
        if whatsapp and template.review_status != "approved":
            run.outcome = "template_not_approved"
            logger.info(
                "salesbot run %d on lead %d: template %d is %s, not sent",
                run.seq,
                lead.id,
                template.id,
                template.review_status,
            )
            return
        contact = self._state.contacts.get(lead.main_contact_id or 0)
        text = fill_markers(template.content, lead, contact)
        message = _bot_message(run, lead, text, via="template", template_id=template.id)
        if not whatsapp:
            message = self._through_window(lead, message)
        self.template_sends += 1
        await self._bot_sends(run, lead, message)

    async def _bot_sends(self, run: SalesbotRun, lead: Lead, message: ChatMessage) -> None:
        """The run's message reaches the chat (delivered or refused by the channel) and
        echoes back, like any outgoing message."""
        run.outcome = "sent"
        run.message_id = message.id
        run.text = message.text
        run.delivered = message.delivered
        run.failure = message.failure or None
        await self._publish(lead, message, OUTGOING_EVENT)

    def _through_window(self, lead: Lead, message: ChatMessage) -> ChatMessage:
        """``message`` as the channel takes it at ``message.at``: free text into a closed
        window is marked failed and listed."""
        window = chat_window(self._config, lead, message.at)
        if window.takes_free_text:
            return message
        self.closed_window_sends.append(
            ClosedWindowSend(
                lead_id=lead.id,
                text=message.text,
                via=message.via,
                at=message.at,
                origin=window.origin,
                message_id=message.id,
            )
        )
        logger.info("lead %d: %s message outside the 24-hour window", lead.id, message.via)
        return dataclasses.replace(message, delivered=False, failure=OUTSIDE_WINDOW)

    def send_via_chats_api(
        self,
        lead: Lead,
        text: str,
        message_type: str,
        attachment: Attachment | None,
        ref_id: str,
        author_name: str,
    ) -> str:
        """Accept a Chats API message now; it reaches the chat and echoes after the delay."""
        self.chats_api_sends += 1
        message = ChatMessage(
            id=str(uuid.uuid4()),
            lead_id=lead.id,
            direction="outgoing",
            author_type="bot",
            author_id=str(uuid.uuid5(_BOT_NAMESPACE, self._config.scope_id)),
            author_name=author_name,
            text=text,
            at=time.time(),
            via="chats_api",
            message_type=message_type,
            attachment=attachment,
            ref_id=ref_id,
        )
        self._spawn(self._deliver_later(message))
        return message.id

    async def _deliver_later(self, message: ChatMessage) -> None:
        await asyncio.sleep(self._config.echo_delay)
        lead = self._state.leads.get(message.lead_id)
        if lead is not None:
            delivered = self._through_window(lead, dataclasses.replace(message, at=time.time()))
            await self._publish(lead, delivered, OUTGOING_EVENT)

    async def _publish(
        self, lead: Lead, message: ChatMessage, event_type: str, created_by: int = 0
    ) -> Notified:
        self._state.add_message(message)
        # Real Kommo's chat message events name the message, its channel and its talk, and
        # who wrote it (0 for a bot or the customer); they carry no text (docs/kommo-api.md).
        self._state.add_event(
            event_type,
            lead.id,
            int(message.at),
            [{"message": {"id": message.id, "origin": lead.chat_origin, "talk_id": lead.talk_id}}],
            created_by=created_by,
        )
        hook = MessageHook(
            id=message.id,
            chat_id=lead.chat_id,
            talk_id=lead.talk_id,
            contact_id=lead.main_contact_id,
            text=message.text,
            created_at=int(message.at),
            lead_id=lead.id,
            direction=message.direction,
            author_id=message.author_id,
            author_type=self._echo_author_type(message),
            author_name=message.author_name,
            author_avatar_url=f"https://amojo.kommo.com/avatars/{message.author_id}.jpg",
            message_type=message.message_type,
            attachment=message.attachment,
            origin=lead.chat_origin,
        )
        body = message_add_body(self.account, [hook])
        deliveries = await self._webhooks.deliver(
            MESSAGE_SETTING, self.webhook_targets(MESSAGE_SETTING), body
        )
        return Notified(body, deliveries)

    def _echo_author_type(self, message: ChatMessage) -> str:
        """A Salesbot's message echoes as the bot, or as a user with
        SANDBOX_SALESBOT_ECHO_AUTHOR=user (the chat keeps it as the bot's either way)."""
        if message.via in ("salesbot", "template") and message.author_type == "bot":
            return self._config.salesbot_echo_author
        return message.author_type

    async def lead_event(self, kind: str, lead: Lead, old_status_id: int | None) -> Notified:
        """POST ``leads[add]`` or ``leads[status]`` for ``lead`` as it is now."""
        self._state.add_event(
            "lead_added" if kind == "add" else "lead_status_changed",
            lead.id,
            int(time.time()),
            [{"lead_status": {"id": lead.status_id, "pipeline_id": lead.pipeline_id}}],
        )
        hook = self._lead_hook(lead, old_status_id if kind == "status" else None)
        setting = LEAD_SETTINGS[kind]
        body = lead_event_body(self.account, kind, [hook])
        return Notified(
            body, await self._webhooks.deliver(setting, self.webhook_targets(setting), body)
        )

    def leads_edited(self, edits: Sequence[tuple[Lead, int]]) -> None:
        """Leads changed through the API, each with its responsible user before: one
        ``leads[update]`` body for them all, one ``leads[responsible]`` for those whose
        responsible user changed, to the hooks subscribed to each."""
        hooks = [
            (self._lead_hook(lead), lead.responsible_user_id != before) for lead, before in edits
        ]
        self._tell_subscribers(
            LEAD_SETTINGS["update"], lead_event_body(self.account, "update", [h for h, _ in hooks])
        )
        if handed_over := [hook for hook, changed in hooks if changed]:
            self._tell_subscribers(
                LEAD_SETTINGS["responsible"],
                lead_event_body(self.account, "responsible", handed_over),
            )

    def contacts_edited(self, edits: Sequence[tuple[Contact, int]]) -> None:
        """Contacts changed through the API, as ``leads_edited`` tells leads."""
        hooks = [
            (
                ContactHook(
                    id=contact.id,
                    name=contact.name,
                    responsible_user_id=contact.responsible_user_id,
                    created_user_id=self._state.admin.id,
                    date_create=contact.created_at,
                    last_modified=contact.updated_at,
                    custom_fields=_custom_fields(self._state.contact_fields, contact.fields),
                ),
                contact.responsible_user_id != before,
            )
            for contact, before in edits
        ]
        self._tell_subscribers(
            CONTACT_SETTINGS["update"],
            contact_event_body(self.account, "update", [h for h, _ in hooks]),
        )
        if handed_over := [hook for hook, changed in hooks if changed]:
            self._tell_subscribers(
                CONTACT_SETTINGS["responsible"],
                contact_event_body(self.account, "responsible", handed_over),
            )

    def _lead_hook(self, lead: Lead, old_status_id: int | None = None) -> LeadHook:
        """``lead`` as it is now; with ``old_status_id``, a move from that status."""
        return LeadHook(
            id=lead.id,
            name=lead.name,
            status_id=lead.status_id,
            pipeline_id=lead.pipeline_id,
            responsible_user_id=lead.responsible_user_id,
            price=lead.price,
            created_user_id=self._state.admin.id,
            date_create=lead.created_at,
            last_modified=lead.updated_at,
            custom_fields=_custom_fields(self._state.lead_fields, lead.fields),
            old_status_id=old_status_id,
            old_pipeline_id=lead.pipeline_id if old_status_id is not None else None,
        )

    def _tell_subscribers(self, setting: str, body: str) -> None:
        """Deliver ``body`` a moment after the change, as Kommo does, to the hooks
        subscribed to ``setting`` (none subscribed: nothing is sent)."""
        urls = self.subscribers(setting)
        if urls:
            self._spawn(self._deliver(setting, urls, body))

    async def _deliver(self, setting: str, urls: list[str], body: str) -> None:
        await self._webhooks.deliver(setting, urls, body)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background delivery failed", exc_info=task.exception())

    def scheduled(self) -> frozenset[asyncio.Task[None]]:
        """The runs and echoes scheduled and not yet finished."""
        return frozenset(self._tasks)

    async def settle(self, tasks: frozenset[asyncio.Task[None]]) -> None:
        """Wait until ``tasks`` (from ``scheduled``) have happened."""
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every scheduled run and echo has happened."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.drain()


def _custom_fields(
    definitions: dict[int, CustomFieldDef], fields: FieldValues
) -> list[CustomFieldHook]:
    return [
        CustomFieldHook(
            id=field_id,
            name=definitions[field_id].name,
            values=[value.value for value in values],
            enum_ids=[value.enum_id for value in values],
        )
        for field_id, values in fields.items()
    ]


def _bot_message(
    run: SalesbotRun, lead: Lead, text: str, via: str = "salesbot", template_id: int | None = None
) -> ChatMessage:
    """What a Salesbot run writes in the lead's chat, as the bot, when it runs."""
    assert run.executed_at is not None  # set by _execute_run
    return ChatMessage(
        id=str(uuid.uuid4()),
        lead_id=lead.id,
        direction="outgoing",
        author_type="bot",
        author_id=str(uuid.uuid5(_BOT_NAMESPACE, str(run.bot_id))),
        author_name="Salesbot",
        text=text,
        at=run.executed_at,
        via=via,
        template_id=template_id,
    )
