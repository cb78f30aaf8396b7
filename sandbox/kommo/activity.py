"""What happens in the account's chats and is told to the bridge by webhook: customers and
vendedores writing, the Salesbot sending the reply field, Chats API sends, lead events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.responses import JsonDict
from sandbox.kommo.state import AccountState, Attachment, ChatMessage, Lead, User
from sandbox.kommo.webhooks import (
    AccountRef,
    CustomFieldHook,
    LeadHook,
    MessageHook,
    WebhookDelivery,
    WebhookSender,
    lead_event_body,
    message_add_body,
)

logger = logging.getLogger(__name__)

MESSAGE_SETTING = "add_message"
LEAD_SETTINGS = {"add": "add_lead", "status": "status_lead"}
INCOMING_EVENT = "incoming_chat_message"
OUTGOING_EVENT = "outgoing_chat_message"
_BOT_NAMESPACE = uuid.UUID("0b6f3f43-8d4c-4f0e-9d55-7a1c2e9b5d10")


@dataclass
class SalesbotRun:
    """One bot run on one lead; ``outcome`` is pending, sent, empty_field, unknown_lead or
    stopped."""

    seq: int
    bot_id: int
    lead_id: int
    requested_at: float
    outcome: str = "pending"
    executed_at: float | None = None
    message_id: str | None = None
    text: str | None = None

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

    @property
    def account(self) -> AccountRef:
        return AccountRef(self._config.subdomain, self._config.account_id)

    def knows_bot(self, bot_id: int) -> bool:
        return bot_id == self._config.salesbot_id

    def webhook_targets(self, setting: str) -> list[str]:
        """The configured bridge URL, then every enabled API subscription to ``setting``."""
        urls = [self._config.bridge_webhook_url] if self._config.bridge_webhook_url else []
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
        # Read when the bot runs, not when it was asked to: a PATCH in between wins.
        text = lead.field_text(self._config.reply_field_id)
        if not text:
            run.outcome = "empty_field"
            logger.info("salesbot run %d on lead %d: reply field empty", run.seq, lead.id)
            return
        message = ChatMessage(
            id=str(uuid.uuid4()),
            lead_id=lead.id,
            direction="outgoing",
            author_type="bot",
            author_id=str(uuid.uuid5(_BOT_NAMESPACE, str(run.bot_id))),
            author_name="Salesbot",
            text=text,
            at=run.executed_at,
            via="salesbot",
        )
        run.outcome = "sent"
        run.message_id = message.id
        run.text = text
        await self._publish(lead, message, OUTGOING_EVENT)

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
            await self._publish(lead, dataclasses.replace(message, at=time.time()), OUTGOING_EVENT)

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
            [{"message": {"id": message.id, "origin": "waba", "talk_id": lead.talk_id}}],
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
            author_type=message.author_type,
            author_name=message.author_name,
            author_avatar_url=f"https://amojo.kommo.com/avatars/{message.author_id}.jpg",
            message_type=message.message_type,
            attachment=message.attachment,
        )
        body = message_add_body(self.account, [hook])
        deliveries = await self._webhooks.deliver(
            MESSAGE_SETTING, self.webhook_targets(MESSAGE_SETTING), body
        )
        return Notified(body, deliveries)

    async def lead_event(self, kind: str, lead: Lead, old_status_id: int | None) -> Notified:
        """POST ``leads[add]`` or ``leads[status]`` for ``lead`` as it is now."""
        self._state.add_event(
            "lead_added" if kind == "add" else "lead_status_changed",
            lead.id,
            int(time.time()),
            [{"lead_status": {"id": lead.status_id, "pipeline_id": lead.pipeline_id}}],
        )
        custom_fields = [
            CustomFieldHook(
                id=field_id,
                name=self._state.lead_fields[field_id].name,
                values=[value.value for value in values],
                enum_ids=[value.enum_id for value in values],
            )
            for field_id, values in lead.fields.items()
        ]
        hook = LeadHook(
            id=lead.id,
            name=lead.name,
            status_id=lead.status_id,
            pipeline_id=lead.pipeline_id,
            responsible_user_id=lead.responsible_user_id,
            price=lead.price,
            created_user_id=self._state.admin.id,
            date_create=lead.created_at,
            last_modified=lead.updated_at,
            custom_fields=custom_fields,
            old_status_id=old_status_id if kind == "status" else None,
            old_pipeline_id=lead.pipeline_id if kind == "status" else None,
        )
        setting = LEAD_SETTINGS[kind]
        body = lead_event_body(self.account, kind, [hook])
        return Notified(
            body, await self._webhooks.deliver(setting, self.webhook_targets(setting), body)
        )

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
