"""What real Kommo bodies did to the bridge (issue 19), through real processes: an odd part
of a body never loses the valid message beside it and is logged and counted; a message
the bridge cannot answer never reaches n8n; a lead a chat created is answered, not
greeted; a message Kommo redelivers days later is recorded, not answered."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for

DELAY = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "hardening",
        env={
            "PROACTIVE_HOURS": "00:00-24:00",
            "PROACTIVE_DAYS": "mon-sun",
            "PROACTIVE_ON_LEAD_ADD": "form",
            "PROACTIVE_LEAD_ADD_DELAY_SECONDS": str(DELAY),
            "PROACTIVE_VIA_N8N": "false",
        },
    ) as running:
        yield running


def _message(lead_id: int, text: str, **fields: str) -> dict[str, str]:
    """One incoming WhatsApp message as Kommo writes it (index 0)."""
    base = {
        "id": str(uuid.uuid4()),
        "chat_id": str(uuid.uuid4()),
        "talk_id": "5210",
        "text": text,
        "created_at": str(int(time.time())),
        "element_type": "2",
        "element_id": str(lead_id),
        "entity_type": "lead",
        "entity_id": str(lead_id),
        "type": "incoming",
        "author[id]": str(uuid.uuid4()),
        "author[type]": "external",
        "author[name]": "Cliente",
        "origin": "waba",
        "message_type": "text",
    }
    base.update(fields)
    return {"account[subdomain]": "previdas", "account[id]": "30000001"} | {
        f"message[add][0][{key}]": value for key, value in base.items() if value != ""
    }


def _post(http: httpx.Client, stack: Stack, fields: dict[str, str]) -> httpx.Response:
    return http.post(
        stack.webhook_url,
        content=urlencode(fields),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def _envelope_with(http: httpx.Client, stack: Stack, text: str) -> dict[str, Any] | None:
    for envelope in envelopes(http, stack):
        if any(m.get("text") == text for m in envelope.get("messages", [])):
            return envelope
    return None


def _log(stack: Stack, service: str) -> str:
    return "".join(p.log() for p in stack.services[service])


def _counters(api: httpx.Client) -> dict[str, int]:
    return dict(api.get("/stats").json()["counters"])


def test_junk_beside_a_valid_message_is_skipped_and_the_message_answered(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    text = "Oi, vi o anúncio de vocês"
    fields = _message(9100001, text) | {
        "foo": "bar",
        "leads[delete]": "123",
        "message[add][1][chat_id]": "sem-id",
        "message[add][0][created_at]": str(int(time.time() * 1000)),  # milliseconds
    }
    answer = _post(http, stack, fields)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 1
    envelope = wait_for(lambda: _envelope_with(http, stack, text), what="the envelope")
    assert envelope["conversation"]["lead_id"] == 9100001
    # Each skipped part: logged once with its reason and field, never its value.
    log = _log(stack, "conversation")
    assert "webhook item skipped (unexpected_field): foo" in log
    assert "webhook item skipped (not_a_list): leads[delete]" in log
    assert "webhook item skipped (missing_id): message[add][1][id]" in log
    assert "sem-id" not in log
    metrics = http.get(f"{stack.edge_url}/metrics").text
    assert 'bridge_webhook_refusals_total{reason="unexpected_field",scope="item"} 1.0' in metrics
    counters = _counters(api)
    assert counters["webhook_skipped_not_a_list"] == 1
    assert counters["webhook_skipped_missing_id"] == 1


def test_a_body_with_nothing_valid_is_refused_logged_and_counted(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    fields = {"account[subdomain]": "previdas", "message[add][0][text]": "segredo-do-cliente"}
    answer = _post(http, stack, fields)
    assert answer.status_code == 400
    assert "message[add][0][id] is missing" in answer.json()["error"]
    wait_for(
        lambda: "webhook refused (no_valid_event)" in _log(stack, "conversation"),
        what="the refusal in the log",
    )
    assert "segredo-do-cliente" not in _log(stack, "conversation")
    metrics = http.get(f"{stack.edge_url}/metrics").text
    assert 'bridge_webhook_refusals_total{reason="no_valid_event",scope="body"} 1.0' in metrics
    assert _counters(api)["webhook_refused_no_valid_event"] == 1


def test_a_message_for_a_lead_kommo_does_not_know_never_reaches_n8n(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    text = "mensagem para um lead que não existe"
    assert _post(http, stack, _message(9199999, text)).status_code == 200
    wait_for(
        lambda: _counters(api).get("messages_without_lead", 0) >= 1,
        what="the message recorded without a lead",
    )
    assert _envelope_with(http, stack, text) is None


def test_a_chat_bound_to_a_contact_is_answered_on_the_contacts_lead(
    stack: Stack, http: httpx.Client
) -> None:
    lead = http.get(f"{stack.sandbox_url}/_sandbox/leads/9100002").json()["lead"]
    contact_id = lead["_embedded"]["contacts"][0]["id"]
    text = "Oi, sou eu de novo, pelo contato"
    fields = _message(
        0, text, element_type="1", element_id=str(contact_id), entity_type="", entity_id=""
    )
    assert _post(http, stack, fields).status_code == 200
    envelope = wait_for(lambda: _envelope_with(http, stack, text), what="the envelope")
    assert envelope["conversation"]["lead_id"] == 9100002
    assert envelope["conversation"]["contact_id"] == contact_id
    assert envelope["lead"]["id"] == 9100002


def test_a_message_redelivered_days_later_is_recorded_not_answered(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    text = "mensagem de três dias atrás"
    old = str(int(time.time()) - 3 * 86400)
    assert _post(http, stack, _message(9100003, text, created_at=old)).status_code == 200
    wait_for(lambda: _counters(api).get("messages_too_old", 0) >= 1, what="the old message")
    # In the history, for the people who answer.
    assert text in api.get("/debug/conversations").text
    time.sleep(1)
    assert _envelope_with(http, stack, text) is None


def test_a_lead_created_by_a_chat_is_answered_not_greeted(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100004
    # Kommo's order when a chat creates its lead: add_lead, then add_message.
    answer = _post(
        http,
        stack,
        {"account[subdomain]": "previdas", "leads[add][0][id]": str(lead)},
    )
    assert answer.status_code == 200
    text = "Oi! Vim pelo WhatsApp"
    customer_writes(http, stack, lead, text)
    wait_for(lambda: _envelope_with(http, stack, text), what="the customer's message at n8n")
    wait_for(
        lambda: _counters(api).get("proactive_skipped_customer_wrote", 0) >= 1,
        timeout=DELAY + 10,
        what="the proactive start skipped",
    )
    outgoing = [m["text"] for m in chat(http, stack, lead) if m["direction"] == "outgoing"]
    assert not any("(form)" in t for t in outgoing), outgoing


def test_a_lead_that_already_has_a_conversation_gets_no_proactive_start(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100006
    customer_writes(http, stack, lead, "Oi, tudo bem?")
    wait_for(
        lambda: any(
            e["conversation"]["lead_id"] == lead for e in envelopes(http, stack) if e["messages"]
        ),
        what="the conversation",
    )
    answer = _post(http, stack, {"account[subdomain]": "previdas", "leads[add][0][id]": str(lead)})
    assert answer.status_code == 200
    wait_for(
        lambda: "already has a conversation: no proactive start" in _log(stack, "conversation"),
        what="the start declined",
    )


def test_a_huge_message_reaches_n8n_cut_at_whatsapps_maximum(
    stack: Stack, http: httpx.Client
) -> None:
    head = "mensagem enorme " + uuid.uuid4().hex
    answer = _post(http, stack, _message(9100007, head + " " + "x" * 100_000))
    assert answer.status_code == 200

    def envelope_of_lead() -> dict[str, Any] | None:
        for envelope in envelopes(http, stack):
            for message in envelope.get("messages", []):
                if message.get("text", "").startswith(head):
                    return dict(message)
        return None

    message = wait_for(envelope_of_lead, what="the envelope")
    assert len(message["text"]) == 4096
    assert message["text"].endswith(" […]")
    assert message["truncated"] is True
