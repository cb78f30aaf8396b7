"""Scheduling requests: dates, duplicates, status changes and the payload for n8n.
Plain data, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.common.errors import Conflict, InvalidInput

PENDING = "pending"
DELIVERED = "delivered"
CONFIRMED = "confirmed"
FAILED = "failed"
# n8n may report the row written or not; a final state stays final.
_ALLOWED = {
    PENDING: {DELIVERED, CONFIRMED, FAILED},
    DELIVERED: {CONFIRMED, FAILED},
    CONFIRMED: set(),
    FAILED: set(),
}
# A slot a few minutes in the past is a clock or typing slip, not a request for the past.
_PAST_TOLERANCE = timedelta(minutes=5)


def parse_slot(value: str, timezone: str, now: datetime) -> datetime | None:
    """The requested slot as an aware datetime, or None when only a preference is given."""
    if not value.strip():
        return None
    try:
        slot = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(
            f"requested_at {value!r} is not an ISO 8601 date-time (e.g. 2026-12-01T14:30)"
        ) from exc
    if slot.tzinfo is None:
        slot = slot.replace(tzinfo=ZoneInfo(timezone))
    if slot < now - _PAST_TOLERANCE:
        raise InvalidInput(f"requested_at {value!r} is in the past")
    return slot


def slot_key(slot: datetime | None, preference: str) -> str:
    """What makes two requests of one lead the same: the minute, or the preference."""
    if slot is not None:
        return slot.astimezone(UTC).strftime("%Y%m%dT%H%M")
    return "pref:" + " ".join(preference.lower().split())


def check_transition(current: str, new: str) -> bool:
    """True when the status changes, False when it is already `new`; raises if not allowed."""
    if new not in _ALLOWED:
        raise InvalidInput(f"status must be one of {sorted(_ALLOWED)}")
    if new == current:
        return False
    if new not in _ALLOWED.get(current, set()):
        raise Conflict(f"an agendamento {current} cannot become {new}")
    return True


def agenda_row(
    *,
    request_id: str,
    slot: datetime | None,
    timezone: str,
    preference: str,
    notes: str,
    lead: dict[str, Any],
    contact: dict[str, Any] | None,
    vendedor: dict[str, Any],
) -> dict[str, Any]:
    """The row n8n writes to Supabase's `agenda` table, ready to insert."""
    local = slot.astimezone(ZoneInfo(timezone)) if slot else None
    return {
        "id": request_id,
        "lead_id": lead["id"],
        "lead_nome": lead.get("name"),
        "contato_nome": (contact or {}).get("name"),
        "contato_telefone": (contact or {}).get("phone"),
        "vendedor_id": vendedor["id"],
        "vendedor_nome": vendedor["name"],
        "vendedor_email": vendedor.get("email"),
        "data_hora": local.isoformat() if local else None,
        "data": local.strftime("%d/%m/%Y") if local else None,
        "hora": local.strftime("%H:%M") if local else None,
        "preferencia": preference or None,
        "observacoes": notes or None,
        "status": "solicitado",
    }


def confirmation_key(request_id: str) -> str:
    """The idempotency key of the one message that tells the customer about this
    agendamento: a confirmation posted twice (n8n retrying it) is delivered once."""
    return f"agendamento:{request_id}"


def callbacks(edge_public_url: str, request_id: str, lead_id: int) -> dict[str, Any]:
    """How n8n answers a scheduling.requested: `callback` messages the customer (through
    POST /send-response by lead, which opens a conversation if the lead has none),
    `status_callback` reports whether the agenda row was written."""
    edge = edge_public_url.rstrip("/")
    return {
        "callback": {
            "url": f"{edge}/send-response",
            "reply_token": None,
            "lead_id": lead_id,
            "idempotency_key": confirmation_key(request_id),
        },
        "status_callback": {
            "url": f"{edge}/agendamento/{request_id}/status",
            "method": "POST",
            "statuses": [CONFIRMED, FAILED],
        },
    }


def now_utc() -> datetime:
    return datetime.now(UTC)
