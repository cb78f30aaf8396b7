"""The one shape of every envelope the bridge POSTs to n8n (docs/n8n-contract.md, "The
envelope"): a customer's messages (`message.received`), a proactive start
(`conversation.proactive`) and a scheduling request (`scheduling.requested`) differ only in
what they fill in. The services build their parts; this puts them together, so a field
added to the contract is added once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MESSAGE_RECEIVED = "message.received"
CONVERSATION_PROACTIVE = "conversation.proactive"
SCHEDULING_REQUESTED = "scheduling.requested"
EVENTS = (MESSAGE_RECEIVED, CONVERSATION_PROACTIVE, SCHEDULING_REQUESTED)


def n8n_envelope(
    *,
    event: str,
    event_id: str,
    occurred_at: str,
    conversation: dict[str, Any] | None,
    lead: dict[str, Any] | None,
    contact: dict[str, Any] | None,
    vendedor: dict[str, Any] | None,
    callback: dict[str, Any],
    messages: Sequence[dict[str, Any]] = (),
    history: Sequence[dict[str, Any]] = (),
    trigger: str | None = None,
    scheduling: dict[str, Any] | None = None,
    templates: Sequence[dict[str, Any]] = (),
    window: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope, every top-level field present (null or empty when it does not apply).
    `window` (WhatsApp's 24-hour window at the top level) is for events that may come
    without a conversation: a scheduling request for a lead nobody has talked to yet."""
    if event not in EVENTS:
        raise ValueError(f"unknown envelope event {event!r}")
    body: dict[str, Any] = {
        "event": event,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "conversation": conversation,
    }
    if window is not None:
        body["window"] = window
    body |= {
        "lead": lead,
        "contact": contact,
        "vendedor": vendedor,
        "messages": list(messages),
        "history": list(history),
        "trigger": trigger,
        "scheduling": scheduling,
        "callback": callback,
        # What n8n may answer with instead of text (`template` + `variables`), e.g. when
        # the window is closed.
        "templates": list(templates),
    }
    return body
