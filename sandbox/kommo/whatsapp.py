"""WhatsApp's rules as the sandbox enforces them (docs/kommo-api.md, "WhatsApp's 24-hour
window"): the customer-service window of a chat, and a template's markers filled from a lead.

- A chat whose origin is windowed (``SANDBOX_WINDOW_ORIGINS``: ``waba``, Instagram, Facebook
  by default) takes free-form text only until ``SANDBOX_WINDOW_SECONDS`` (24 h) after its
  customer's last message; a customer who never wrote has no open window. Other origins
  (QR-code WhatsApp ``com.amocrm.amocrmwa``, ``telegram``, ``onlinechat`` …) have no window.
- Only a customer's message opens the window; a template sent does not.
- A template's markers — ``{{contact.name}}``, ``{{lead.name}}``, ``{{lead.id}}``,
  ``{{lead.cf.<field id>}}``, ``{{contact.cf.<field id>}}`` — are filled from the lead and its
  main contact as they are when the bot runs; an unknown marker becomes empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.custom_fields import FieldValues
from sandbox.kommo.records import Contact, Lead
from sandbox.kommo.responses import JsonDict

OUTSIDE_WINDOW = "outside_24h_window"

_MARKER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


@dataclass(frozen=True)
class ChatWindow:
    """A chat's channel and its window at one moment."""

    origin: str
    customer_last_wrote_at: float | None
    # False: the origin has no window, free text always reaches the customer.
    windowed: bool
    window_open: bool
    window_closes_at: float | None

    @property
    def takes_free_text(self) -> bool:
        return not self.windowed or self.window_open

    def as_json(self) -> JsonDict:
        return {
            "origin": self.origin,
            "customer_last_wrote_at": self.customer_last_wrote_at,
            "windowed": self.windowed,
            "window_open": self.window_open,
            "window_closes_at": self.window_closes_at,
        }


def chat_window(config: SandboxConfig, lead: Lead, now: float) -> ChatWindow:
    windowed = lead.chat_origin in config.window_origins
    last = lead.customer_last_wrote_at
    if not windowed:
        return ChatWindow(lead.chat_origin, last, False, True, None)
    if last is None:
        return ChatWindow(lead.chat_origin, None, True, False, None)
    closes_at = last + config.window_seconds
    return ChatWindow(lead.chat_origin, last, True, now < closes_at, closes_at)


def fill_markers(content: str, lead: Lead, contact: Contact | None) -> str:
    """``content`` with each ``{{…}}`` marker replaced by its value now."""

    def value(match: re.Match[str]) -> str:
        return _marker_value(match.group(1).split("."), lead, contact)

    return _MARKER.sub(value, content)


def _marker_value(path: list[str], lead: Lead, contact: Contact | None) -> str:
    match path:
        case ["lead", "name"]:
            return lead.name
        case ["lead", "id"]:
            return str(lead.id)
        case ["lead", "cf", field_id] if field_id.isdigit():
            return _first(lead.fields, int(field_id))
        case ["contact", "name"] if contact is not None:
            return contact.name
        case ["contact", "cf", field_id] if contact is not None and field_id.isdigit():
            return _first(contact.fields, int(field_id))
    return ""


def _first(fields: FieldValues, field_id: int) -> str:
    values = fields.get(field_id) or []
    return values[0].value if values else ""
