"""Scheduling requests: enriched with the right vendedor, delivered to n8n durably,
their status updated by n8n's callback, confirmed to the customer through the
envelope's callback (once, even when n8n posts it twice); duplicates and bad requests
recognised."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from devstack.stack import Stack
from tests.e2e.conftest import chat, lead_snapshot, wait_for

# An active, non-admin user of the sandbox's seed: a vendedor.
VENDEDOR_USER = 10000004


def _api(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30)


def _scheduling_envelopes(http: httpx.Client, stack: Stack) -> list[dict[str, Any]]:
    received = http.get(f"{stack.standin_url}/_standin/received").json()["received"]
    return [r for r in received if r["body"]["event"] == "scheduling.requested"]


def _in_days(days: int) -> str:
    return (
        (datetime.now(UTC) + timedelta(days=days))
        .replace(second=0, microsecond=0)
        .strftime("%Y-%m-%dT%H:%M")
    )


def test_a_request_reaches_n8n_with_the_right_vendedor_and_confirms_by_callback(
    stack: Stack, http: httpx.Client
) -> None:
    with _api(stack) as api:
        slot = _in_days(3)
        created = api.post(
            "/agendamento/request",
            json={"lead_id": 9100018, "requested_at": slot, "notes": "Revisão do benefício"},
        )
        assert created.status_code == 201, created.text
        agendamento = created.json()
        expected_vendedor = api.get("/vendedor/lead/9100018").json()
        assert agendamento["vendedor"]["id"] == expected_vendedor["id"]

        delivered = wait_for(
            lambda: next(
                (
                    r
                    for r in _scheduling_envelopes(http, stack)
                    if r["body"]["event_id"] == agendamento["id"]
                ),
                None,
            ),
            what="the scheduling envelope at n8n",
        )
        body = delivered["body"]
        assert body["lead"]["id"] == 9100018
        assert body["vendedor"]["id"] == expected_vendedor["id"]
        row = body["scheduling"]["agenda"]
        assert row["vendedor_nome"] == expected_vendedor["name"]
        assert row["lead_id"] == 9100018 and row["contato_telefone"].startswith("+55")
        assert row["observacoes"] == "Revisão do benefício"
        assert row["data_hora"].startswith(slot[:10])
        assert "webhook-signature" in delivered["headers"]
        assert api.get(f"/agendamento/{agendamento['id']}").json()["status"] == "delivered"

        callback = body["scheduling"]["status_callback"]["url"]
        confirmed = api.post(callback, json={"status": "confirmed", "detail": "agenda #42"})
        assert confirmed.status_code == 200
        assert confirmed.json()["status"] == "confirmed"
        again = api.post(callback, json={"status": "failed"})
        assert again.status_code == 409, "a final state stays final"

        duplicate = api.post(
            "/agendamento/request", json={"lead_id": 9100018, "requested_at": slot}
        )
        assert duplicate.status_code == 200
        assert duplicate.json()["duplicate"] is True
        assert duplicate.json()["id"] == agendamento["id"]


def test_the_workflow_confirms_to_a_customer_with_no_conversation_once_and_reports_status(
    stack: Stack, http: httpx.Client
) -> None:
    created_lead = http.post(
        f"{stack.sandbox_url}/_sandbox/lead-event",
        json={"kind": "add", "name": "Renata Lobo", "responsible_user_id": VENDEDOR_USER},
    )
    created_lead.raise_for_status()
    lead = int(created_lead.json()["lead_id"])
    # Its customer wrote in Kommo a minute ago: WhatsApp's window is open for free text.
    http.post(
        f"{stack.sandbox_url}/_sandbox/leads/{lead}/chat",
        json={"customer_last_wrote_at": time.time() - 60},
    ).raise_for_status()
    with _api(stack) as api:
        created = api.post(
            "/agendamento/request", json={"lead_id": lead, "requested_at": _in_days(4)}
        )
        assert created.status_code == 201, created.text
        agendamento_id = created.json()["id"]
        body = wait_for(
            lambda: next(
                (
                    r["body"]
                    for r in _scheduling_envelopes(http, stack)
                    if r["body"]["event_id"] == agendamento_id
                ),
                None,
            ),
            what="the scheduling envelope at n8n",
        )
        assert body["conversation"] is None, "the bridge has never talked to this lead"
        # Its customer wrote a minute ago (Kommo's events say so): free text can go.
        assert body["window"]["origin"] == "waba"
        assert body["window"]["window_open"] is True and body["window"]["window_open_until"]
        callback = body["callback"]
        assert callback["url"] == f"{stack.edge_url}/send-response"
        assert callback["lead_id"] == lead
        assert callback["idempotency_key"]
        assert callback["reply_token"] is None

        # What the workflow does: confirm to the customer through `callback` (its
        # HTTP node retrying, so twice), then report through `status_callback`.
        text = "Olá Renata! Sua consulta está agendada. Até lá!"
        confirmation = {
            "lead_id": callback["lead_id"],
            "idempotency_key": callback["idempotency_key"],
            "text": text,
        }
        first = api.post(callback["url"], json=confirmation)
        again = api.post(callback["url"], json=confirmation)
        assert first.status_code in (200, 202), first.text
        assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
        assert again.json()["delivery_id"] == first.json()["delivery_id"]

        def sent() -> list[dict[str, Any]]:
            return [
                m
                for m in chat(http, stack, lead)
                if m["direction"] == "outgoing" and m["text"] == text
            ]

        def notes() -> int:
            return sum(
                1 for n in lead_snapshot(http, stack, lead)["notes"] if text in n["params"]["text"]
            )

        wait_for(sent, what="the confirmation in the customer's chat")
        # The note follows the delivery: once it is there, nothing else is on its way.
        wait_for(notes, what="the note on the lead")
        assert len(sent()) == 1 and notes() == 1

        status = body["scheduling"]["status_callback"]
        assert status["method"] == "POST"
        assert api.get(f"/agendamento/{agendamento_id}").json()["status"] == "delivered"
        reported = api.request(status["method"], status["url"], json={"status": "confirmed"})
        assert reported.status_code == 200, reported.text
        assert api.get(f"/agendamento/{agendamento_id}").json()["status"] == "confirmed"


def test_bad_requests_get_clear_answers(stack: Stack) -> None:
    with _api(stack) as api:
        past = api.post(
            "/agendamento/request", json={"lead_id": 9100018, "requested_at": "2020-01-01T10:00"}
        )
        assert past.status_code == 400 and "past" in past.json()["error"]
        garbled = api.post(
            "/agendamento/request", json={"lead_id": 9100018, "requested_at": "amanhã"}
        )
        assert garbled.status_code == 400 and "ISO 8601" in garbled.json()["error"]
        unknown = api.post(
            "/agendamento/request", json={"lead_id": 9999999, "requested_at": _in_days(2)}
        )
        assert unknown.status_code == 404 and "9999999" in unknown.json()["error"]
        departed = api.post(
            "/agendamento/request", json={"lead_id": 9100020, "preference": "sexta de manhã"}
        )
        assert departed.status_code == 409 and "vendedor" in departed.json()["error"]
        assert api.post("/agendamento/request", json={"lead_id": 9100018}).status_code == 422
        assert api.get("/agendamento/nope").status_code == 404


def test_a_request_made_while_n8n_is_down_is_delivered_when_it_returns(
    stack: Stack, http: httpx.Client
) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json={"down": True})
    try:
        with _api(stack) as api:
            created = api.post(
                "/agendamento/request",
                json={"lead_id": 9100019, "preference": "quinta depois das 15h"},
            )
            assert created.status_code == 201
            agendamento_id = created.json()["id"]
            wait_for(
                lambda: api.get(f"/agendamento/{agendamento_id}").json()["attempts"] >= 1,
                what="a failed attempt",
            )
            assert api.get(f"/agendamento/{agendamento_id}").json()["status"] == "pending"
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"down": False})
    with _api(stack) as api:
        wait_for(
            lambda: api.get(f"/agendamento/{agendamento_id}").json()["status"] == "delivered",
            timeout=15,
            what="the delivery after n8n came back",
        )
