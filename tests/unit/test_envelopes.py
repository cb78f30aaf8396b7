"""Every envelope n8n receives is put together by one builder (services/common/envelopes.py):
the three events have the contract's top-level fields, and only a scheduling request adds
the top-level `window`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.common import envelopes
from services.conversation import envelope as conversation_envelope

CONTRACT = Path(__file__).parents[2] / "docs" / "n8n-contract.md"


def documented_top_level_fields() -> set[str]:
    """The first column of the contract's "Top-level fields" table."""
    text = CONTRACT.read_text(encoding="utf-8")
    section = text[text.index("### Top-level fields") :]
    section = section[: section.index("\n### ", 1)]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


PARTS: dict[str, Any] = {
    "event_id": "e1",
    "occurred_at": "2026-12-06T10:00:00Z",
    "conversation": {"id": "c1"},
    "lead": {"id": 9100001},
    "contact": None,
    "vendedor": None,
    "callback": {"url": "https://bridge.example.com/send-response", "reply_token": "t"},
}
DOCUMENTED = documented_top_level_fields()


@pytest.mark.parametrize("event", envelopes.EVENTS)
def test_every_event_has_every_documented_top_level_field(event: str) -> None:
    body = envelopes.n8n_envelope(event=event, **PARTS)
    assert set(body) == DOCUMENTED - {"window"}
    assert (body["messages"], body["history"], body["templates"]) == ([], [], [])
    assert body["trigger"] is None and body["scheduling"] is None


def test_only_a_request_that_may_have_no_conversation_carries_the_window() -> None:
    window = {"origin": None, "window_open": None, "window_open_until": None}
    body = envelopes.n8n_envelope(
        event=envelopes.SCHEDULING_REQUESTED, window=window, **{**PARTS, "conversation": None}
    )
    assert set(body) == DOCUMENTED
    assert body["window"] == window


def test_the_conversation_service_builds_its_two_events_with_it() -> None:
    common: dict[str, Any] = {
        "event_id": "e1",
        "conversation": {"id": "c1"},
        "lead": None,
        "contact": None,
        "vendedor": None,
        "messages": [{"id": "m1", "text": "oi", "seq": "1-0", "created_at": 1}],
        "history": [],
        "callback_url": "https://bridge.example.com/send-response",
        "reply_token": "t",
        "occurred_at": 1_800_000_000.0,
    }
    received = conversation_envelope.message_envelope(**common)
    assert received["event"] == envelopes.MESSAGE_RECEIVED
    assert received["messages"] == [{"id": "m1", "text": "oi"}]  # stream ids stay inside
    proactive = conversation_envelope.message_envelope(
        **{**common, "messages": []}, event=envelopes.CONVERSATION_PROACTIVE, trigger="form"
    )
    assert (proactive["event"], proactive["trigger"]) == ("conversation.proactive", "form")
    assert set(received) == set(proactive) == DOCUMENTED - {"window"}


def test_an_unknown_event_is_a_bug_caught_at_once() -> None:
    with pytest.raises(ValueError, match="unknown envelope event"):
        envelopes.n8n_envelope(event="message.recieved", **PARTS)
