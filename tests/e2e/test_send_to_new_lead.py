"""POST /send-response by lead_id to a lead nobody has talked to yet: the bridge opens its
conversation (the lead's contact found in Kommo, and from Kommo's events when its customer
last wrote: WhatsApp's window) and delivers the text once; it still
never talks over a person and still refuses a lead Kommo does not know."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, lead_snapshot, wait_for

# An active, non-admin user of the sandbox's seed: a vendedor.
VENDEDOR_USER = 10000003


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30
    ) as client:
        yield client


def new_lead(http: httpx.Client, stack: Stack, name: str) -> int:
    """A lead created in Kommo now (no webhook about it reaches the bridge's
    conversations): the bridge has never seen it."""
    created = http.post(
        f"{stack.sandbox_url}/_sandbox/lead-event",
        json={"kind": "add", "name": name, "responsible_user_id": VENDEDOR_USER},
    )
    created.raise_for_status()
    lead = int(created.json()["lead_id"])
    # Its customer wrote a minute ago (in Kommo; the bridge saw no webhook of it): WhatsApp's
    # window is open, so free text reaches them (tests/e2e/test_whatsapp_window.py has the
    # customer who never wrote).
    http.post(
        f"{stack.sandbox_url}/_sandbox/leads/{lead}/chat",
        json={"customer_last_wrote_at": time.time() - 60},
    ).raise_for_status()
    return lead


def outgoing(http: httpx.Client, stack: Stack, lead: int, text: str) -> list[dict[str, Any]]:
    return [
        m for m in chat(http, stack, lead) if m["direction"] == "outgoing" and m["text"] == text
    ]


def noted(http: httpx.Client, stack: Stack, lead: int, text: str) -> int:
    return sum(1 for n in lead_snapshot(http, stack, lead)["notes"] if text in n["params"]["text"])


def test_a_lead_without_a_conversation_gets_the_message_in_a_new_one(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = new_lead(http, stack, "Helena Prado")
    assert api.get("/conversations/active", params={"lead_id": lead}).json()["total"] == 0
    text = "Olá Helena! Sua consulta está confirmada para terça às 14h."

    sent = api.post("/send-response", json={"lead_id": lead, "text": text})
    assert sent.status_code in (200, 202), sent.text
    assert sent.json()["status"] in ("delivered", "queued")
    assert sent.json()["lead_id"] == lead

    wait_for(lambda: outgoing(http, stack, lead, text), what="the message in the customer's chat")
    wait_for(lambda: noted(http, stack, lead, text), what="the note on the lead")
    assert len(outgoing(http, stack, lead, text)) == 1
    listed = api.get("/conversations/active", params={"lead_id": lead}).json()
    assert [c["id"] for c in listed["conversations"]] == [sent.json()["conversation_id"]]
    assert listed["conversations"][0]["contact_id"], "opened with the lead's contact from Kommo"


def test_the_same_idempotency_key_twice_delivers_once_also_to_a_new_lead(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = new_lead(http, stack, "Otávio Reis")
    text = "Olá Otávio! Recebemos seu pedido."
    body = {"lead_id": lead, "text": text, "idempotency_key": f"confirmacao-{lead}"}

    first = api.post("/send-response", json=body)
    again = api.post("/send-response", json=body)
    assert first.status_code in (200, 202), first.text
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "duplicate"
    assert again.json()["delivery_id"] == first.json()["delivery_id"]
    assert again.json()["conversation_id"] == first.json()["conversation_id"]

    # The note follows the delivery: once it is there, nothing else is on its way.
    wait_for(lambda: noted(http, stack, lead, text), what="the note on the lead")
    assert len(outgoing(http, stack, lead, text)) == 1
    assert noted(http, stack, lead, text) == 1


def test_a_conversation_taken_over_by_a_person_is_still_refused(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = new_lead(http, stack, "Bruna Teles")
    first = api.post("/send-response", json={"lead_id": lead, "text": "Olá Bruna!"})
    assert first.status_code in (200, 202), first.text
    paused = api.post(
        "/bot-control", json={"action": "pause", "lead_id": lead, "by": "Carla", "reason": "ligou"}
    )
    assert paused.status_code == 200, paused.text

    refused = api.post("/send-response", json={"lead_id": lead, "text": "O bot não fala agora"})
    assert refused.status_code == 409, refused.text
    assert "taken over" in refused.json()["error"]
    assert not outgoing(http, stack, lead, "O bot não fala agora")


def test_a_lead_kommo_does_not_know_is_404(api: httpx.Client) -> None:
    answer = api.post("/send-response", json={"lead_id": 9899999, "text": "Olá!"})
    assert answer.status_code == 404, answer.text
    assert "9899999" in answer.json()["error"] and "Kommo" in answer.json()["error"]
    listed = api.get("/conversations/active", params={"lead_id": 9899999}).json()
    assert listed["total"] == 0, "no conversation is opened for an unknown lead"
