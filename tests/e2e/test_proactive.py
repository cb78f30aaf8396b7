"""Proactive conversations end to end: started by the API or by Kommo, once per lead
and trigger even when requests race, only for the vendedor's areas, with n8n's first
message or the template when n8n is silent."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, lead_snapshot, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "proactive",
        env={
            "PROACTIVE_HOURS": "00:00-24:00",
            "PROACTIVE_DAYS": "mon-sun",
            "PROACTIVE_ON_LEAD_ADD": "form",
            "PROACTIVE_LEAD_ADD_DELAY_SECONDS": "0.5",
            "PROACTIVE_N8N_TIMEOUT_SECONDS": "2",
        },
    ) as running:
        yield running


def proactive_envelopes(http: httpx.Client, stack: Stack, lead: int) -> list[dict[str, Any]]:
    received = http.get(f"{stack.standin_url}/_standin/received").json()["received"]
    return [
        r["body"]
        for r in received
        if r["body"]["event"] == "conversation.proactive" and r["body"]["lead"]["id"] == lead
    ]


def outgoing(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [m["text"] for m in chat(http, stack, lead) if m["direction"] == "outgoing"]


def test_a_proactive_start_reaches_n8n_and_its_message_the_customer(
    stack: Stack, api: httpx.Client, http: httpx.Client
) -> None:
    lead = 9100001
    started = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    assert started.status_code == 201, started.text
    assert started.json()["created"] is True
    envelope = wait_for(lambda: proactive_envelopes(http, stack, lead), what="the envelope")[0]
    assert envelope["trigger"] == "form"
    assert envelope["contact"]["name"] and envelope["vendedor"]["name"]
    assert envelope["conversation"]["id"] == started.json()["conversation_id"]
    wait_for(lambda: any("(form)" in t for t in outgoing(http, stack, lead)), what="the message")
    # Its note is added by the gateway once the delivery answered.
    wait_for(
        lambda: any(
            "(form)" in n["params"]["text"] for n in lead_snapshot(http, stack, lead)["notes"]
        ),
        what="the message's note on the lead",
    )

    # The customer answers: the same conversation goes on.
    customer_writes(http, stack, lead, "Oi! Quero saber mais")
    reactive = wait_for(
        lambda: next(
            (
                r["body"]
                for r in http.get(f"{stack.standin_url}/_standin/received").json()["received"]
                if r["body"]["event"] == "message.received"
                and r["body"]["conversation"]["lead_id"] == lead
            ),
            None,
        ),
        what="the customer's answer at n8n",
    )
    assert reactive["conversation"]["id"] == started.json()["conversation_id"]


def test_racing_starts_of_one_lead_and_trigger_open_one_conversation(
    stack: Stack, api: httpx.Client, http: httpx.Client
) -> None:
    lead = 9100003
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: api.post(
                    "/start-proactive", json={"lead_id": lead, "trigger": "download"}
                ),
                range(6),
            )
        )
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["conversation_id"] for a in answers}) == 1
    wait_for(lambda: proactive_envelopes(http, stack, lead), what="the envelope")
    again = api.post("/start-proactive", json={"lead_id": lead, "trigger": "download"})
    assert again.status_code == 200 and again.json()["created"] is False
    assert len(proactive_envelopes(http, stack, lead)) == 1


def test_a_lead_outside_the_vendedors_areas_is_refused_with_the_reason(
    stack: Stack, api: httpx.Client
) -> None:
    lead = 9100002  # area trabalhista in the sandbox
    responsible = api.get(f"/vendedor/lead/{lead}").json()["id"]
    api.put(f"/vendedores/{responsible}/areas", json={"areas": ["previdenciario"]})
    refused = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    assert refused.status_code == 409
    assert "serves only previdenciario" in refused.json()["error"]
    api.put(f"/vendedores/{responsible}/areas", json={"areas": ["trabalhista"]})
    accepted = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    assert accepted.status_code == 201, "a refusal does not block a later start"
    assert (
        api.post("/start-proactive", json={"lead_id": 9999999, "trigger": "form"}).status_code
        == 404
    )
    assert (
        api.post("/start-proactive", json={"lead_id": lead, "trigger": "Novo!"}).status_code == 400
    )


def test_the_template_goes_when_n8n_stays_silent(
    stack: Stack, api: httpx.Client, http: httpx.Client
) -> None:
    lead = 9100004
    http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": False})
    try:
        started = api.post("/start-proactive", json={"lead_id": lead, "trigger": "agendamento"})
        assert started.json()["status"] == "awaiting_n8n"
        vendedor = api.get(f"/vendedor/lead/{lead}").json()["name"]
        message = wait_for(
            lambda: next((t for t in outgoing(http, stack, lead) if vendedor in t), None),
            timeout=10,
            what="the template",
        )
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": True})
    assert "pedido de agendamento" in message
    assert len(outgoing(http, stack, lead)) == 1


def test_templates_are_editable_through_the_api(stack: Stack, api: httpx.Client) -> None:
    changed = api.put("/proactive/templates/download", json={"text": "Oi {nome}, {vendedor} aqui!"})
    assert changed.status_code == 200
    assert api.get("/proactive/templates").json()["templates"]["download"] == (
        "Oi {nome}, {vendedor} aqui!"
    )
    bad = api.put("/proactive/templates/download", json={"text": "Oi {cliente}"})
    assert bad.status_code == 400 and "placeholder" in bad.json()["error"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Oi {nome:>999999999}", "format spec"),  # a gigabyte string at the next start
        ("Oi {nome!r}", "conversion"),
        ("Oi {nome.__class__}", "attribute or index access"),
        ("Oi {0}", "positional field"),
    ],
)
def test_a_template_with_more_than_a_bare_placeholder_is_refused(
    stack: Stack, api: httpx.Client, text: str, why: str
) -> None:
    before = api.get("/proactive/templates").json()["templates"]
    refused = api.put("/proactive/templates/form", json={"text": text})
    assert refused.status_code == 400, refused.text
    assert why in refused.json()["error"] and "{nome}" in refused.json()["error"]
    assert api.get("/proactive/templates").json()["templates"] == before


def test_a_trigger_without_a_template_is_refused_and_starts_once_it_has_one(
    stack: Stack, api: httpx.Client, http: httpx.Client
) -> None:
    lead = 9100006
    refused = api.post("/start-proactive", json={"lead_id": lead, "trigger": "webinar"})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "'webinar' has no message template" in error
    assert "PUT /proactive/templates/webinar" in error and "PROACTIVE_TEMPLATES_FILE" in error
    assert not proactive_envelopes(http, stack, lead)
    assert not outgoing(http, stack, lead)

    added = api.put("/proactive/templates/webinar", json={"text": "Oi {nome}, gostou do webinar?"})
    assert added.status_code == 200
    started = api.post("/start-proactive", json={"lead_id": lead, "trigger": "webinar"})
    assert started.status_code == 201, "the refused start claimed nothing"
    envelope = wait_for(lambda: proactive_envelopes(http, stack, lead), what="the envelope")[0]
    assert envelope["trigger"] == "webinar"


def test_a_lead_created_in_kommo_starts_its_conversation(stack: Stack, http: httpx.Client) -> None:
    created = http.post(
        f"{stack.sandbox_url}/_sandbox/lead-event",
        json={"kind": "add", "name": "Lead novo do site"},
    )
    created.raise_for_status()
    lead = int(created.json()["lead_id"])
    envelope = wait_for(lambda: proactive_envelopes(http, stack, lead), what="the envelope")[0]
    assert envelope["trigger"] == "form"
