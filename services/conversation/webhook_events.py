"""Typed events from a parsed Kommo webhook.

Chat messages and lead events (created, moved) are read; so are the leads and contacts
Kommo says were changed (edited, given another responsible user, deleted), as the ids whose
copies must go (services/conversation/context.py, the gateway's cache); other kinds are
counted as ignored. Every value in a Kommo webhook is a string; conversion errors name the
field. A body is read item by item: an item that is not valid is skipped (and said why),
the rest of the body is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from services.common.errors import InvalidInput
from services.common.kommo_ids import parse_kommo_id
from services.conversation.kommo_form import Tree

# The last second a datetime can show (9999-12-31T23:59:59Z).
_UNIX_TIME_MAX = 253_402_300_799
_UNIX_TIME_MAX_DIGITS = len(str(_UNIX_TIME_MAX))
E = TypeVar("E", "MessageEvent", "LeadEvent", int)

# From here on a time is in milliseconds: in seconds it would be after the year 5138.
_MILLISECONDS_FROM = 10**11
# Kommo's element_type for a contact and for a lead.
_ELEMENT_TYPE_CONTACT = "1"
_ELEMENT_TYPE_LEAD = "2"
# A field name quoted in a refusal is cut here: the names are the sender's to choose.
_FIELD_NAME_CHARS = 40
# Items' reasons quoted in a whole-body refusal.
_REFUSALS_SHOWN = 5
# WhatsApp's own maximum for a text message: a longer one cannot have come from a customer
# on it, and n8n (and its LLM) get no more than this of any message.
MAX_TEXT_CHARS = 4096
TRUNCATION_MARK = " […]"
_EXTERNAL_AUTHOR = "external"
# Kommo's events that change a lead or a contact without anything for the bridge to do
# but forget its copies of them (`leads[update][0][id]=…`, settings `update_lead`,
# `responsible_lead`, `delete_lead` and their contact twins).
_CHANGE_ACTIONS = ("update", "responsible", "delete")


@dataclass(frozen=True, slots=True)
class Attachment:
    type: str
    link: str
    file_name: str


@dataclass(frozen=True, slots=True)
class MessageEvent:
    message_id: str
    chat_id: str
    talk_id: int
    contact_id: int
    lead_id: int
    text: str
    created_at: int
    direction: str  # "incoming" or "outgoing"
    author_id: str
    author_type: str
    author_name: str
    origin: str
    message_type: str
    attachment: Attachment | None
    # The text was longer than MAX_TEXT_CHARS and was cut (it ends with TRUNCATION_MARK).
    truncated: bool = False

    @property
    def from_customer(self) -> bool:
        return self.direction == "incoming" or self.author_type == _EXTERNAL_AUTHOR

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies and was 15 % of the ingest path.
        a = self.attachment
        return {
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "talk_id": self.talk_id,
            "contact_id": self.contact_id,
            "lead_id": self.lead_id,
            "text": self.text,
            "created_at": self.created_at,
            "direction": self.direction,
            "author_id": self.author_id,
            "author_type": self.author_type,
            "author_name": self.author_name,
            "origin": self.origin,
            "message_type": self.message_type,
            "attachment": None
            if a is None
            else {"type": a.type, "link": a.link, "file_name": a.file_name},
            "truncated": self.truncated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MessageEvent:
        attachment = data.get("attachment")
        return cls(**{**data, "attachment": Attachment(**attachment) if attachment else None})


@dataclass(frozen=True, slots=True)
class LeadEvent:
    """A lead created (`add`) or moved to another status (`status`) in Kommo."""

    kind: str
    lead_id: int
    status_id: int
    old_status_id: int
    pipeline_id: int
    responsible_user_id: int
    changed_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "lead",
            "action": self.kind,
            "lead_id": self.lead_id,
            "status_id": self.status_id,
            "old_status_id": self.old_status_id,
            "pipeline_id": self.pipeline_id,
            "responsible_user_id": self.responsible_user_id,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeadEvent:
        return cls(
            kind=data["action"],
            lead_id=data["lead_id"],
            status_id=data["status_id"],
            old_status_id=data["old_status_id"],
            pipeline_id=data["pipeline_id"],
            responsible_user_id=data["responsible_user_id"],
            changed_at=data["changed_at"],
        )

    @property
    def dedupe_id(self) -> str:
        return f"lead:{self.lead_id}:{self.kind}:{self.status_id}:{self.changed_at}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """An item (or an unexpected part) of a webhook left out; the rest of the body is kept.

    `reason` is one of a few fixed words (a metric label); `field` names where in the body
    it was. Neither ever holds a value from the body: they are logged."""

    reason: str
    field: str
    detail: str


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    subdomain: str
    account_id: str
    messages: list[MessageEvent]
    ignored: int
    leads: list[LeadEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Leads and contacts Kommo changed (a lead moved to another stage is one), once each:
    # no copy of them may answer a turn.
    changed_lead_ids: list[int] = field(default_factory=list)
    changed_contact_ids: list[int] = field(default_factory=list)


class Refusal(InvalidInput):
    """Why a webhook body, or one item of it, cannot be used: a fixed reason (a metric
    label), the field it is about, and a message for the sender (which may quote a value,
    so it is answered, never logged)."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


def _id(item: Tree, key: str, where: str, *, required: bool = False) -> int:
    """A Kommo id in its range (kommo_ids.py), or 0 when absent. Kommo writes 0 for
    "none" in places (no responsible user, no previous status): absent too, unless the
    id is required."""
    raw = item.get(key, "")
    name = f"{where}[{key}]"
    if raw in ("", None) or (raw == "0" and not required):
        if required:
            raise Refusal("missing_id", name, f"{name} is missing")
        return 0
    if not isinstance(raw, str):
        raise Refusal("bad_id", name, f"{name} must be a Kommo id, not a group of fields")
    try:
        return parse_kommo_id(raw, name)
    except InvalidInput as exc:
        raise Refusal("bad_id", name, str(exc)) from exc


def _unix_time(item: Tree, key: str, where: str) -> int:
    """Unix seconds, 0 when absent; bounded so that no date conversion downstream fails.
    A time in milliseconds (some integrations and amoCRM's newer events write them) is
    read as such: no time in seconds reaches 10^11 before the year 5138."""
    raw = item.get(key, "")
    if raw in ("", None):
        return 0
    name = f"{where}[{key}]"
    if (
        not isinstance(raw, str)
        or not (raw.isascii() and raw.isdigit())
        or len(raw) > _UNIX_TIME_MAX_DIGITS + 3
    ):
        raise Refusal("bad_time", name, _time_error(name, raw))
    value = int(raw)
    if value >= _MILLISECONDS_FROM:
        value //= 1000
    if value > _UNIX_TIME_MAX:
        raise Refusal("bad_time", name, _time_error(name, raw))
    return value


def _time_error(name: str, raw: object) -> str:
    return (
        f"{name} must be an integer from 0 to {_UNIX_TIME_MAX} "
        f"(Unix seconds, or milliseconds), got {str(raw)[:40]!r}"
    )


def _str(item: Tree, key: str) -> str:
    value = item.get(key, "")
    return value if isinstance(value, str) else ""


def _message(item: Any, where: str, max_text: int) -> MessageEvent:
    if not isinstance(item, dict):
        raise Refusal("not_a_group", where, f"{where} must be a group of fields")
    message_id = _str(item, "id")
    if not message_id:
        raise Refusal("missing_id", f"{where}[id]", f"{where}[id] is missing")
    lead_id = 0
    contact_id = _id(item, "contact_id", where)
    element_type = _str(item, "element_type")
    if element_type == _ELEMENT_TYPE_LEAD or _str(item, "entity_type") == "lead":
        lead_id = _id(item, "element_id", where) or _id(item, "entity_id", where)
    elif element_type == _ELEMENT_TYPE_CONTACT or _str(item, "entity_type") == "contact":
        # A chat bound to a contact: its element is the contact, not a lead (the lead is
        # looked up through the contact before anything goes to n8n).
        contact_id = contact_id or _id(item, "element_id", where) or _id(item, "entity_id", where)
    chat_id = _str(item, "chat_id")
    if not chat_id and not lead_id:
        raise Refusal(
            "no_chat_or_lead", where, f"{where} has neither chat_id nor a lead (element_id)"
        )
    author = item.get("author")
    author = author if isinstance(author, dict) else {}
    direction = _str(item, "type") or "incoming"
    if direction not in ("incoming", "outgoing"):
        raise Refusal(
            "bad_direction",
            f"{where}[type]",
            f"{where}[type] must be incoming or outgoing, got {direction[:20]!r}",
        )
    raw_attachment = item.get("attachment")
    attachment = None
    if isinstance(raw_attachment, dict) and (
        raw_attachment.get("link") or raw_attachment.get("type")
    ):
        attachment = Attachment(
            type=_str(raw_attachment, "type"),
            link=_str(raw_attachment, "link"),
            file_name=_str(raw_attachment, "file_name"),
        )
    text = _str(item, "text")
    truncated = len(text) > max_text
    if truncated:
        text = text[: max_text - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return MessageEvent(
        message_id=message_id,
        chat_id=chat_id,
        talk_id=_id(item, "talk_id", where),
        contact_id=contact_id,
        lead_id=lead_id,
        text=text,
        created_at=_unix_time(item, "created_at", where),
        direction=direction,
        author_id=_str(author, "id"),
        author_type=_str(author, "type"),
        author_name=_str(author, "name"),
        origin=_str(item, "origin"),
        # Kommo leaves message_type out of some media messages: the attachment says.
        message_type=_str(item, "message_type") or (attachment and attachment.type) or "text",
        attachment=attachment,
        truncated=truncated,
    )


def parse_webhook(
    tree: Tree, expected_subdomain: str = "", max_text: int = MAX_TEXT_CHARS
) -> ParsedWebhook:
    """The events of a webhook body, item by item: what is valid is kept, what is not is
    listed in `skipped` (Kommo adds fields over time, and one odd item must not lose the
    messages beside it). Refused whole (Refusal) only for another account, or when nothing
    in the body is a Kommo event."""
    account = tree.get("account")
    account = account if isinstance(account, dict) else {}
    subdomain = _str(account, "subdomain")
    if expected_subdomain and subdomain and subdomain != expected_subdomain:
        raise Refusal(
            "wrong_account",
            "account[subdomain]",
            f"webhook from account {subdomain!r}, this bridge serves {expected_subdomain!r}",
        )
    messages: list[MessageEvent] = []
    leads: list[LeadEvent] = []
    changed: dict[str, list[int]] = {"leads": [], "contacts": []}
    skipped: list[Skipped] = []
    ignored = 0
    for entity, actions in tree.items():
        if entity == "account":
            continue
        if not isinstance(actions, dict):
            name = entity[:_FIELD_NAME_CHARS]
            skipped.append(
                Skipped("unexpected_field", name, f"unexpected field {name!r}: not a Kommo event")
            )
            continue
        for action, items in actions.items():
            where = f"{entity[:_FIELD_NAME_CHARS]}[{action[:_FIELD_NAME_CHARS]}]"
            if not isinstance(items, dict):
                # amoCRM's own `leads[delete]=123` form among them.
                skipped.append(Skipped("not_a_list", where, f"{where} must be a list of items"))
                continue
            if entity == "message" and action == "add":
                _each(
                    items, where, lambda item, at: _message(item, at, max_text), messages, skipped
                )
            elif entity == "leads" and action in ("add", "status"):
                _each(items, where, partial(_lead, action=action), leads, skipped)
            elif entity in changed and action in _CHANGE_ACTIONS:
                _each(items, where, _changed_id, changed[entity], skipped)
            else:
                ignored += len(items)
    moved = [lead.lead_id for lead in leads if lead.kind == "status"]
    changed_leads = list(dict.fromkeys([*moved, *changed["leads"]]))
    changed_contacts = list(dict.fromkeys(changed["contacts"]))
    if (
        not messages
        and not leads
        and not changed_leads
        and not changed_contacts
        and not ignored
        and (skipped or not account)
    ):
        reasons = "; ".join(s.detail for s in skipped[:_REFUSALS_SHOWN])
        if not account:
            raise Refusal(
                "not_a_webhook",
                skipped[0].field if skipped else "",
                f"not a Kommo webhook: {reasons or 'no account and no events'}",
            )
        raise Refusal(
            "no_valid_event", skipped[0].field, f"no valid Kommo event in the body: {reasons}"
        )
    return ParsedWebhook(
        subdomain,
        _str(account, "id"),
        messages,
        ignored,
        leads,
        skipped,
        changed_leads,
        changed_contacts,
    )


def _each(
    items: Tree,
    where: str,
    read: Callable[[Any, str], E],
    into: list[E],
    skipped: list[Skipped],
) -> None:
    """Read each item of `where` into `into`; one that is not valid goes to `skipped`."""
    for index, item in items.items():
        at = f"{where}[{index[:_FIELD_NAME_CHARS]}]"
        try:
            into.append(read(item, at))
        except Refusal as exc:
            skipped.append(Skipped(exc.reason, exc.field, str(exc)))


def _lead(item: Any, where: str, action: str) -> LeadEvent:
    if not isinstance(item, dict):
        raise Refusal("not_a_group", where, f"{where} must be a group of fields")
    return LeadEvent(
        kind=action,
        lead_id=_id(item, "id", where, required=True),
        status_id=_id(item, "status_id", where),
        old_status_id=_id(item, "old_status_id", where),
        pipeline_id=_id(item, "pipeline_id", where),
        responsible_user_id=_id(item, "responsible_user_id", where),
        changed_at=_unix_time(item, "updated_at", where)
        or _unix_time(item, "last_modified", where)
        or _unix_time(item, "created_at", where),
    )


def _changed_id(item: Any, where: str) -> int:
    """The id of a lead or contact Kommo changed; the rest of the item (the entity as it
    is now) is not read: the next turn reads it from Kommo."""
    if not isinstance(item, dict):
        raise Refusal("not_a_group", where, f"{where} must be a group of fields")
    return _id(item, "id", where, required=True)
