"""Typed events from a parsed Kommo webhook.

Only chat messages are acted on today; lead events are recognised and counted as
ignored. Every value in a Kommo webhook is a string; conversion errors name the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidInput
from services.common.kommo_ids import parse_kommo_id
from services.conversation.kommo_form import Tree

# The last second a datetime can show (9999-12-31T23:59:59Z).
_UNIX_TIME_MAX = 253_402_300_799
_UNIX_TIME_MAX_DIGITS = len(str(_UNIX_TIME_MAX))
# Kommo's element_type for a lead.
_ELEMENT_TYPE_LEAD = "2"
_EXTERNAL_AUTHOR = "external"


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
class ParsedWebhook:
    subdomain: str
    account_id: str
    messages: list[MessageEvent]
    ignored: int
    leads: list[LeadEvent] = field(default_factory=list)


def _id(item: Tree, key: str, where: str, *, required: bool = False) -> int:
    """A Kommo id in its range (kommo_ids.py), or 0 when absent. Kommo writes 0 for
    "none" in places (no responsible user, no previous status): absent too, unless the
    id is required."""
    raw = item.get(key, "")
    if raw in ("", None) or (raw == "0" and not required):
        if required:
            raise InvalidInput(f"{where}[{key}] is missing")
        return 0
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}[{key}] must be a Kommo id, not a group of fields")
    return parse_kommo_id(raw, f"{where}[{key}]")


def _unix_time(item: Tree, key: str, where: str) -> int:
    """Unix seconds, 0 when absent; bounded so that no date conversion downstream fails."""
    raw = item.get(key, "")
    if raw in ("", None):
        return 0
    if (
        not isinstance(raw, str)
        or not (raw.isascii() and raw.isdigit())
        or len(raw) > _UNIX_TIME_MAX_DIGITS
        or int(raw) > _UNIX_TIME_MAX
    ):
        raise InvalidInput(
            f"{where}[{key}] must be an integer from 0 to {_UNIX_TIME_MAX} "
            f"(Unix seconds), got {str(raw)[:40]!r}"
        )
    return int(raw)


def _str(item: Tree, key: str) -> str:
    value = item.get(key, "")
    return value if isinstance(value, str) else ""


def _message(item: Any, where: str) -> MessageEvent:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be a group of fields")
    message_id = _str(item, "id")
    if not message_id:
        raise InvalidInput(f"{where}[id] is missing")
    lead_id = 0
    if _str(item, "element_type") == _ELEMENT_TYPE_LEAD or _str(item, "entity_type") == "lead":
        lead_id = _id(item, "element_id", where) or _id(item, "entity_id", where)
    chat_id = _str(item, "chat_id")
    if not chat_id and not lead_id:
        raise InvalidInput(f"{where} has neither chat_id nor a lead (element_id)")
    author = item.get("author")
    author = author if isinstance(author, dict) else {}
    direction = _str(item, "type") or "incoming"
    if direction not in ("incoming", "outgoing"):
        raise InvalidInput(f"{where}[type] must be incoming or outgoing, got {direction[:20]!r}")
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
    return MessageEvent(
        message_id=message_id,
        chat_id=chat_id,
        talk_id=_id(item, "talk_id", where),
        contact_id=_id(item, "contact_id", where),
        lead_id=lead_id,
        text=_str(item, "text"),
        created_at=_unix_time(item, "created_at", where),
        direction=direction,
        author_id=_str(author, "id"),
        author_type=_str(author, "type"),
        author_name=_str(author, "name"),
        origin=_str(item, "origin"),
        message_type=_str(item, "message_type") or "text",
        attachment=attachment,
    )


def parse_webhook(tree: Tree, expected_subdomain: str = "") -> ParsedWebhook:
    account = tree.get("account")
    account = account if isinstance(account, dict) else {}
    subdomain = _str(account, "subdomain")
    if expected_subdomain and subdomain and subdomain != expected_subdomain:
        raise InvalidInput(
            f"webhook from account {subdomain!r}, this bridge serves {expected_subdomain!r}"
        )
    messages: list[MessageEvent] = []
    leads: list[LeadEvent] = []
    ignored = 0
    for entity, actions in tree.items():
        if entity == "account":
            continue
        if not isinstance(actions, dict):
            raise InvalidInput(f"not a Kommo webhook: unexpected field {entity[:40]!r}")
        for action, items in actions.items():
            if not isinstance(items, dict):
                raise InvalidInput(f"{entity}[{action}] must be a list of items")
            if entity == "message" and action == "add":
                messages.extend(
                    _message(item, f"message[add][{index}]") for index, item in items.items()
                )
            elif entity == "leads" and action in ("add", "status"):
                leads.extend(
                    _lead(item, action, f"leads[{action}][{index}]")
                    for index, item in items.items()
                )
            else:
                ignored += len(items)
    if not messages and not leads and not ignored and not account:
        raise InvalidInput("not a Kommo webhook: no account and no events")
    return ParsedWebhook(subdomain, _str(account, "id"), messages, ignored, leads)


def _lead(item: Any, action: str, where: str) -> LeadEvent:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be a group of fields")
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
