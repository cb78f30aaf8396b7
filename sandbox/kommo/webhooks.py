"""Kommo's standard webhooks: form-encoded bodies with PHP-style bracketed keys, and their
delivery to the bridge.

Kommo does not sign these bodies and every value is a string; several items may share one
body (``[0]``, ``[1]``, …). See docs/kommo-api.md, "Standard webhooks".
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from sandbox.kommo.records import Attachment
from sandbox.kommo.responses import JsonDict

logger = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = "amoCRM-Webhooks/3.0"

Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class AccountRef:
    subdomain: str
    account_id: int

    @property
    def url(self) -> str:
        return f"https://{self.subdomain}.kommo.com"


@dataclass(frozen=True)
class MessageHook:
    """One ``message[add][i]`` item."""

    id: str
    chat_id: str
    talk_id: int
    contact_id: int | None
    text: str
    created_at: int
    lead_id: int
    direction: str
    author_id: str
    author_type: str
    author_name: str
    author_avatar_url: str
    message_type: str
    attachment: Attachment | None = None
    origin: str = "waba"


@dataclass(frozen=True)
class CustomFieldHook:
    id: int
    name: str
    values: Sequence[str]
    enum_ids: Sequence[int | None] = ()


@dataclass(frozen=True)
class LeadHook:
    """One ``leads[add|status|update|responsible][i]`` item: the lead as it is now."""

    id: int
    name: str
    status_id: int
    pipeline_id: int
    responsible_user_id: int
    price: int
    created_user_id: int
    date_create: int
    last_modified: int
    custom_fields: Sequence[CustomFieldHook] = ()
    old_status_id: int | None = None
    old_pipeline_id: int | None = None


@dataclass(frozen=True)
class ContactHook:
    """One ``contacts[update|responsible][i]`` item: the contact as it is now."""

    id: int
    name: str
    responsible_user_id: int
    created_user_id: int
    date_create: int
    last_modified: int
    custom_fields: Sequence[CustomFieldHook] = ()


def _account_pairs(account: AccountRef) -> Pairs:
    return [
        ("account[subdomain]", account.subdomain),
        ("account[id]", str(account.account_id)),
        ("account[_links][self]", account.url),
    ]


def message_add_body(account: AccountRef, messages: Sequence[MessageHook]) -> str:
    pairs = _account_pairs(account)
    for index, message in enumerate(messages):
        prefix = f"message[add][{index}]"
        item: Pairs = [
            ("id", message.id),
            ("chat_id", message.chat_id),
            ("talk_id", str(message.talk_id)),
            ("contact_id", "" if message.contact_id is None else str(message.contact_id)),
            ("text", message.text),
            ("created_at", str(message.created_at)),
            ("element_type", "2"),
            ("element_id", str(message.lead_id)),
            ("entity_type", "lead"),
            ("entity_id", str(message.lead_id)),
            ("type", message.direction),
            ("author[id]", message.author_id),
            ("author[type]", message.author_type),
            ("author[name]", message.author_name),
            ("author[avatar_url]", message.author_avatar_url),
            ("origin", message.origin),
            ("message_type", message.message_type),
        ]
        if message.attachment is not None:
            item += [
                ("attachment[type]", message.attachment.type),
                ("attachment[link]", message.attachment.link),
                ("attachment[file_name]", message.attachment.file_name),
            ]
        pairs += [(_nested(prefix, key), value) for key, value in item]
    return urllib.parse.urlencode(pairs)


def lead_event_body(account: AccountRef, kind: str, leads: Sequence[LeadHook]) -> str:
    """``kind`` is ``add``, ``status``, ``update`` or ``responsible``; ``status`` carries
    the old status and pipeline."""
    pairs = _account_pairs(account)
    for index, lead in enumerate(leads):
        prefix = f"leads[{kind}][{index}]"
        item: Pairs = [
            ("id", str(lead.id)),
            ("name", lead.name),
            ("status_id", str(lead.status_id)),
            ("price", str(lead.price)),
            ("responsible_user_id", str(lead.responsible_user_id)),
            ("last_modified", str(lead.last_modified)),
            ("modified_user_id", str(lead.responsible_user_id)),
            ("created_user_id", str(lead.created_user_id)),
            ("date_create", str(lead.date_create)),
            ("pipeline_id", str(lead.pipeline_id)),
            ("account_id", str(account.account_id)),
            ("created_at", str(lead.date_create)),
            ("updated_at", str(lead.last_modified)),
        ]
        if lead.old_status_id is not None:
            item.append(("old_status_id", str(lead.old_status_id)))
        if lead.old_pipeline_id is not None:
            item.append(("old_pipeline_id", str(lead.old_pipeline_id)))
        item += _custom_field_pairs(lead.custom_fields)
        pairs += [(_nested(prefix, key), value) for key, value in item]
    return urllib.parse.urlencode(pairs)


def contact_event_body(account: AccountRef, kind: str, contacts: Sequence[ContactHook]) -> str:
    """``kind`` is ``update`` or ``responsible``: the contact as it is now, lead-like."""
    pairs = _account_pairs(account)
    for index, contact in enumerate(contacts):
        prefix = f"contacts[{kind}][{index}]"
        item: Pairs = [
            ("id", str(contact.id)),
            ("name", contact.name),
            ("responsible_user_id", str(contact.responsible_user_id)),
            ("date_create", str(contact.date_create)),
            ("last_modified", str(contact.last_modified)),
            ("created_user_id", str(contact.created_user_id)),
            ("modified_user_id", str(contact.responsible_user_id)),
            ("account_id", str(account.account_id)),
            ("created_at", str(contact.date_create)),
            ("updated_at", str(contact.last_modified)),
            ("type", "contact"),
        ]
        item += _custom_field_pairs(contact.custom_fields)
        pairs += [(_nested(prefix, key), value) for key, value in item]
    return urllib.parse.urlencode(pairs)


def _custom_field_pairs(custom_fields: Sequence[CustomFieldHook]) -> Pairs:
    pairs: Pairs = []
    for position, custom in enumerate(custom_fields):
        field_key = f"custom_fields[{position}]"
        pairs += [(f"{field_key}[id]", str(custom.id)), (f"{field_key}[name]", custom.name)]
        for value_index, value in enumerate(custom.values):
            value_key = f"{field_key}[values][{value_index}]"
            pairs.append((f"{value_key}[value]", value))
            if value_index < len(custom.enum_ids) and custom.enum_ids[value_index] is not None:
                pairs.append((f"{value_key}[enum]", str(custom.enum_ids[value_index])))
    return pairs


def _nested(prefix: str, key: str) -> str:
    """``("message[add][0]", "author[id]")`` → ``message[add][0][author][id]``."""
    head, sep, rest = key.partition("[")
    return f"{prefix}[{head}]" + (f"[{rest}" if sep else "")


@dataclass(frozen=True)
class WebhookDelivery:
    seq: int
    time: float
    event: str
    url: str | None
    body: str
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def as_json(self) -> JsonDict:
        return {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "url": self.url,
            "body": self.body,
            "status": self.status,
            "error": self.error,
        }


class WebhookSender:
    """POSTs webhook bodies and records every delivery; a failure is recorded, never raised."""

    def __init__(
        self,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 0,
        retry_delay: float = 1.0,
    ) -> None:
        self._timeout = timeout
        self._transport = transport
        self._retries = retries
        self._retry_delay = retry_delay
        self._retrying: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.deliveries: list[WebhookDelivery] = []
        self.sent = 0
        self.failures = 0
        self.retried = 0
        self.given_up = 0

    async def deliver(self, event: str, urls: Sequence[str], body: str) -> list[WebhookDelivery]:
        """The first attempt at each URL, answered at once; a failed one is retried in
        the background when retries are configured, as Kommo does."""
        if not urls:
            return [self._record(event, None, body, None, "no webhook destination configured")]
        first = [await self._post(event, url, body) for url in urls]
        for delivery in first:
            if not delivery.ok and self._retries and delivery.url is not None:
                task = asyncio.create_task(self._retry(event, delivery.url, body))
                self._retrying.add(task)
                task.add_done_callback(self._retrying.discard)
        return first

    @property
    def retries_pending(self) -> int:
        return len(self._retrying)

    async def _retry(self, event: str, url: str, body: str) -> None:
        for attempt in range(self._retries):
            await asyncio.sleep(min(self._retry_delay * 2**attempt, 10.0))
            self.retried += 1
            if (await self._post(event, url, body)).ok:
                return
        self.given_up += 1
        logger.warning("webhook %s to %s: gave up after %d retries", event, url, self._retries)

    async def _post(self, event: str, url: str, body: str) -> WebhookDelivery:
        self.sent += 1
        try:
            answer = await self._http().post(
                url,
                content=body.encode(),
                headers={"Content-Type": FORM_CONTENT_TYPE, "User-Agent": USER_AGENT},
            )
        except httpx.HTTPError as exc:
            self.failures += 1
            logger.warning("webhook %s to %s failed: %r", event, url, exc)
            return self._record(event, url, body, None, repr(exc))
        if not 200 <= answer.status_code < 300:
            self.failures += 1
            logger.warning("webhook %s to %s answered %d", event, url, answer.status_code)
        return self._record(event, url, body, answer.status_code, None)

    def _record(
        self, event: str, url: str | None, body: str, status: int | None, error: str | None
    ) -> WebhookDelivery:
        delivery = WebhookDelivery(
            seq=len(self.deliveries) + 1,
            time=time.time(),
            event=event,
            url=url,
            body=body,
            status=status,
            error=error,
        )
        self.deliveries.append(delivery)
        return delivery

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
        return self._client

    def since(self, seq: int) -> list[WebhookDelivery]:
        return self.deliveries[seq:]

    def reset(self) -> None:
        self.deliveries.clear()
        self.sent = 0
        self.failures = 0

    async def aclose(self) -> None:
        for task in list(self._retrying):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
