"""What the envelopes tell n8n about people, as the settings allow: with
N8N_CONTACT_PHONE=omit and N8N_CONTACT_EMAIL=masked no envelope kind (message.received,
conversation.proactive, scheduling.requested) carries the contact's phone or e-mail, and
the bridge's own reply field is never among the lead's fields."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack.stack import SANDBOX_REPLY_FIELD_ID, Stack
from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.seed import seed
from tests.e2e.conftest import chat, customer_writes, isolated_stack, lead_snapshot, wait_for

REPLY_FIELD_NAME = "Resposta do bot"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "privacy",
        env={
            "N8N_CONTACT_PHONE": "omit",
            "N8N_CONTACT_EMAIL": "masked",
            # Every envelope reads the lead afresh, so the reply field the bot has just
            # written is in what Kommo answers.
            "KOMMO_CACHE_TTL_SECONDS": "0",
            "CONTEXT_CACHE_SECONDS": "0",
            "PROACTIVE_HOURS": "00:00-24:00",
            "PROACTIVE_DAYS": "mon-sun",
        },
    ) as running:
        yield running


def received(http: httpx.Client, stack: Stack, event: str, lead: int) -> list[dict[str, Any]]:
    """Raw body and parsed envelope of each `event` envelope about `lead`."""
    return [
        {"raw": r["raw"], "body": r["body"]}
        for r in http.get(f"{stack.standin_url}/_standin/received").json()["received"]
        if r["body"]["event"] == event and (r["body"].get("lead") or {}).get("id") == lead
    ]


def contact_of(lead: int) -> tuple[str, str | None]:
    """The main contact's phone and e-mail as the sandbox's seed gives them (lead
    9100000 + n has contact 4400000 + n)."""
    contact = seed(SandboxConfig()).contacts[lead - 9100000 + 4400000]
    values = [v.value for field in contact.fields.values() for v in field]
    phone = next(v for v in values if v.startswith("+"))
    return phone, next((v for v in values if "@" in v), None)


def assert_no_personal_data(raw: str, phone: str, email: str | None) -> None:
    digits = re.sub(r"\D", "", phone)
    assert digits[-8:] not in re.sub(r"\D", "", raw), "the phone's digits are in the envelope"
    if email:
        assert email not in raw and email.split("@")[0] not in raw, "the e-mail is in it"


def test_a_message_envelope_has_no_phone_or_email_and_never_the_reply_field(
    stack: Stack, http: httpx.Client
) -> None:
    lead = 9100001
    phone, email = contact_of(lead)
    assert email, "the seed gives this lead's contact an e-mail"
    customer_writes(http, stack, lead, "Oi, queria saber da aposentadoria")
    first = wait_for(
        lambda: received(http, stack, "message.received", lead), timeout=30, what="envelope"
    )[0]
    contact = first["body"]["contact"]
    assert contact["phone"] is None
    assert contact["email"].startswith(email[0]) and "***" in contact["email"]
    assert_no_personal_data(first["raw"], phone, email)

    # The bot's reply is written to the reply field: Kommo now holds it on the lead.
    wait_for(
        lambda: [m for m in chat(http, stack, lead) if m["direction"] == "outgoing"],
        what="the bot's reply",
    )
    fields = lead_snapshot(http, stack, lead)["lead"]["custom_fields_values"] or []
    assert int(SANDBOX_REPLY_FIELD_ID) in {f["field_id"] for f in fields}

    customer_writes(http, stack, lead, "E quanto tempo demora?")
    second = wait_for(
        lambda: received(http, stack, "message.received", lead)[1:], what="second envelope"
    )[0]
    custom_fields = second["body"]["lead"]["custom_fields"]
    assert "Área" in custom_fields, "the lead's other fields are still there"
    assert REPLY_FIELD_NAME not in custom_fields
    assert REPLY_FIELD_NAME not in second["raw"]
    assert_no_personal_data(second["raw"], phone, email)


def test_a_proactive_envelope_follows_the_same_settings(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100002
    phone, email = contact_of(lead)
    started = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    assert started.status_code in (200, 201), started.text
    envelope = wait_for(
        lambda: received(http, stack, "conversation.proactive", lead), what="proactive envelope"
    )[0]
    assert envelope["body"]["contact"]["phone"] is None
    assert REPLY_FIELD_NAME not in envelope["body"]["lead"]["custom_fields"]
    assert_no_personal_data(envelope["raw"], phone, email)


def test_a_scheduling_envelope_and_its_agenda_row_have_no_phone(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100004
    phone, email = contact_of(lead)
    slot = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    created = api.post("/agendamento/request", json={"lead_id": lead, "requested_at": slot})
    assert created.status_code == 201, created.text
    envelope = wait_for(
        lambda: received(http, stack, "scheduling.requested", lead), what="scheduling envelope"
    )[0]
    assert envelope["body"]["contact"]["phone"] is None
    assert envelope["body"]["scheduling"]["agenda"]["contato_telefone"] is None
    assert envelope["body"]["scheduling"]["agenda"]["contato_nome"]
    assert_no_personal_data(envelope["raw"], phone, email)
