"""The JSON envelope the bridge POSTs to n8n (docs/n8n-contract.md) — plain data, no I/O."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.envelopes import MESSAGE_RECEIVED, n8n_envelope
from services.common.privacy import ContactDisclosure
from services.conversation import window
from services.conversation.templates import TemplateRef
from services.conversation.webhook_events import MessageEvent

CONVERSATION_NAMESPACE = uuid.UUID("6b2f7a4e-8f1d-4c1e-9a57-3c0d5e2b9f10")
_SPACES = re.compile(r"\s+")


def conversation_for_lead(lead_id: int) -> str:
    """A lead's conversation id. Deterministic, so two replicas (and a proactive start)
    agree on it without a lock."""
    return str(uuid.uuid5(CONVERSATION_NAMESPACE, f"lead:{lead_id}"))


def conversation_id_for(event: MessageEvent) -> str:
    """A conversation follows its lead (a chat can be reused by another lead); only a
    message with no lead is placed by its chat."""
    if event.lead_id:
        return conversation_for_lead(event.lead_id)
    return str(uuid.uuid5(CONVERSATION_NAMESPACE, f"chat:{event.chat_id}"))


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def text_fingerprint(text: str) -> str:
    """What identifies a text the bridge sent when Kommo echoes it back.

    Whitespace is normalised and characters outside the Basic Multilingual Plane are
    dropped, because Kommo's Salesbot is reported to lose them (docs/kommo-api.md).
    """
    normalised = _SPACES.sub(" ", "".join(c for c in text if ord(c) <= 0xFFFF)).strip()
    return hashlib.sha256(normalised.encode()).hexdigest()[:24]


def inbox_entry(event: MessageEvent, stream_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": event.message_id,
        "text": event.text,
        "at": iso(event.created_at) if event.created_at else None,
        "created_at": event.created_at,
        "seq": stream_id,
        "type": event.message_type,
    }
    if event.truncated:
        entry["truncated"] = True
    if event.attachment is not None:
        entry["attachment"] = {
            "type": event.attachment.type,
            "link": event.attachment.link,
            "file_name": event.attachment.file_name,
        }
    return entry


def history_entry(role: str, text: str, at: float, **extra: Any) -> dict[str, Any]:
    return {"role": role, "text": text, "at": iso(at), **extra}


def _stream_order(seq: str) -> tuple[int, int]:
    ms, _, n = seq.partition("-")
    return (int(ms or 0), int(n or 0))


def order_messages(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kommo's order: its created_at, then the order the webhooks reached us."""
    return sorted(entries, key=lambda e: (e.get("created_at") or 0, _stream_order(e["seq"])))


def bounded_history(
    history: list[dict[str, Any]], exclude_ids: set[str], max_chars: int
) -> list[dict[str, Any]]:
    """The recent turns, newest kept, within a size budget."""
    kept: list[dict[str, Any]] = []
    size = 0
    for entry in reversed(history):
        if entry.get("message_id") in exclude_ids:
            continue
        size += len(entry.get("text") or "")
        if size > max_chars and kept:
            break
        kept.append({k: v for k, v in entry.items() if k != "message_id"})
    kept.reverse()
    return kept


def _custom_fields(
    fields: Any, hidden_field_id: int, allowed: frozenset[str] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in fields:
        if hidden_field_id and field.field_id == hidden_field_id:
            continue
        if allowed is not None and not (
            {field.field_name, field.field_code, str(field.field_id)} & allowed
        ):
            continue
        name = field.field_name or field.field_code or str(field.field_id)
        values = list(field.values)
        out[name] = values[0] if len(values) == 1 else values
    return out


def lead_json(
    lead: gw.Lead | None,
    lead_id: int,
    *,
    reply_field_id: int,
    lead_fields: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    """The lead for n8n, with the custom fields N8N_LEAD_FIELDS allows (None = all). The
    bridge's own reply field (KOMMO_REPLY_FIELD_ID) is always left out: it holds the bot's
    last answer, not something about the lead."""
    if lead is None:
        return {"id": lead_id} if lead_id else None
    return {
        "id": lead.id,
        "name": lead.name,
        "status_id": lead.status_id,
        "pipeline_id": lead.pipeline_id,
        "responsible_user_id": lead.responsible_user_id,
        "price": lead.price,
        "custom_fields": _custom_fields(lead.custom_fields, reply_field_id, lead_fields),
    }


def contact_json(
    contact: gw.Contact | None, contact_id: int, disclosure: ContactDisclosure
) -> dict[str, Any] | None:
    """The contact for n8n, its phone and e-mail as N8N_CONTACT_PHONE/EMAIL allow."""
    if contact is None:
        return {"id": contact_id} if contact_id else None
    return {
        "id": contact.id,
        "name": contact.name,
        "phone": disclosure.phone(contact.phones[0] if contact.phones else None),
        "email": disclosure.email(contact.emails[0] if contact.emails else None),
    }


def vendedor_json(vendedor: vd.Vendedor | None) -> dict[str, Any] | None:
    if vendedor is None:
        return None
    return {
        "id": vendedor.id,
        "name": vendedor.name,
        "email": vendedor.email,
        "areas": list(vendedor.areas),
        "source": vendedor.source,
    }


def window_json(
    policy: window.WindowPolicy, conversation: dict[str, str], now: float
) -> dict[str, Any]:
    """The chat's channel and WhatsApp's window, as every envelope's `conversation`
    carries them: `window_open_until` null when the channel has no window; `window_open`
    false means only a template reaches the customer (docs/n8n-contract.md)."""
    state = conversation_window(policy, conversation, now)
    return {
        "origin": state.origin or None,
        "window_open": state.open,
        "window_open_until": iso(state.open_until) if state.open_until else None,
    }


def conversation_window(
    policy: window.WindowPolicy, conversation: dict[str, str], now: float
) -> window.WindowState:
    return window.state(
        policy,
        conversation.get("origin", ""),
        int(conversation.get("customer_at") or 0) / 1000,
        now,
    )


def message_envelope(
    *,
    event_id: str,
    conversation: dict[str, Any],
    lead: dict[str, Any] | None,
    contact: dict[str, Any] | None,
    vendedor: dict[str, Any] | None,
    messages: list[dict[str, Any]],
    history: list[dict[str, Any]],
    callback_url: str,
    reply_token: str,
    occurred_at: float,
    templates: list[dict[str, Any]] | None = None,
    event: str = MESSAGE_RECEIVED,
    trigger: str | None = None,
) -> dict[str, Any]:
    """A conversation's envelope: a customer's messages, or (`event`
    conversation.proactive, with its `trigger`) a proactive start."""
    return n8n_envelope(
        event=event,
        event_id=event_id,
        occurred_at=iso(occurred_at),
        conversation=conversation,
        lead=lead,
        contact=contact,
        vendedor=vendedor,
        messages=[{k: v for k, v in m.items() if k not in ("seq", "created_at")} for m in messages],
        history=history,
        trigger=trigger,
        callback={"url": callback_url, "reply_token": reply_token},
        templates=templates or [],
    )


def templates_json(configured: Mapping[str, TemplateRef]) -> list[dict[str, Any]]:
    return [
        {"purpose": purpose, "variables": ref.variables}
        for purpose, ref in sorted(configured.items())
    ]
