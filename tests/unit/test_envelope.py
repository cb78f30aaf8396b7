"""Building the envelope for n8n: order, history bounds, echo fingerprints, what it
carries of a person, and how a scheduling envelope is answered."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.privacy import (
    ContactDisclosure,
    ContactPrivacySettings,
    Disclosure,
    mask_email,
    mask_phone,
)
from services.conversation import envelope
from services.conversation.webhook_events import MessageEvent
from services.scheduling import domain

REPLY_FIELD = 900001


def _event(**overrides: object) -> MessageEvent:
    fields: dict[str, object] = {
        "message_id": "m1",
        "chat_id": "chat-1",
        "talk_id": 1,
        "contact_id": 2,
        "lead_id": 3,
        "text": "oi",
        "created_at": 1764000000,
        "direction": "incoming",
        "author_id": "a",
        "author_type": "external",
        "author_name": "Maria",
        "origin": "waba",
        "message_type": "text",
        "attachment": None,
    }
    fields.update(overrides)
    return MessageEvent(**fields)  # type: ignore[arg-type]


def test_a_conversation_follows_its_lead_whoever_sees_it_first() -> None:
    a = envelope.conversation_id_for(_event(message_id="x"))
    assert a == envelope.conversation_id_for(_event(message_id="y", text="outra"))
    assert a == envelope.conversation_id_for(_event(chat_id="chat-2")), "a new chat, same lead"
    assert a == envelope.conversation_for_lead(3), "the same as a proactive start's"
    assert a != envelope.conversation_id_for(_event(lead_id=4)), "the same chat, another lead"


def test_a_message_without_a_lead_is_placed_by_its_chat() -> None:
    a = envelope.conversation_id_for(_event(lead_id=0))
    assert a == envelope.conversation_id_for(_event(lead_id=0, message_id="y"))
    assert a != envelope.conversation_id_for(_event(lead_id=0, chat_id="chat-2"))
    assert a != envelope.conversation_id_for(_event())


def test_messages_are_ordered_by_kommo_time_then_arrival() -> None:
    entries = [
        {"id": "c", "created_at": 20, "seq": "5-0"},
        {"id": "b", "created_at": 10, "seq": "9-0"},
        {"id": "a", "created_at": 10, "seq": "3-1"},
    ]
    assert [e["id"] for e in envelope.order_messages(entries)] == ["a", "b", "c"]


def test_history_keeps_the_newest_turns_within_the_budget() -> None:
    history = [{"role": "customer", "text": "x" * 100, "message_id": str(i)} for i in range(10)]
    kept = envelope.bounded_history(history, exclude_ids={"9"}, max_chars=250)
    assert len(kept) == 2
    assert all("message_id" not in e for e in kept)


def test_echo_fingerprint_survives_what_kommo_does_to_text() -> None:
    sent = "Olá Maria! 😀  Tudo bem?\n"
    echoed = "Olá Maria!  Tudo bem?"
    assert envelope.text_fingerprint(sent) == envelope.text_fingerprint(echoed)
    assert envelope.text_fingerprint(sent) != envelope.text_fingerprint("Olá João!")


def _contact() -> gw.Contact:
    return gw.Contact(
        id=4400001,
        name="Maria Souza",
        phones=["+5511987654321", "+5511900000000"],
        emails=["maria.souza@gmail.com"],
    )


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+5511987654321", "+55 11 9****-**21"),
        ("(11) 98765-4321", "+55 11 9****-**21"),
        ("+55 21 3456-7890", "+55 21 3***-**90"),
        ("+1 415 555 0100", "+1 415-5**-**00"),
        ("99999999999999", "************99"),
        ("12", "***"),
    ],
)
def test_a_masked_phone_keeps_its_area_code_and_last_two_digits(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("maria.souza@gmail.com", "m***@g***.com"),
        ("joao@previdas.com.br", "j***@p***.br"),
        ("not an e-mail", "***"),
    ],
)
def test_a_masked_email_keeps_only_first_letters_and_top_level_domain(
    email: str, masked: str
) -> None:
    assert mask_email(email) == masked


def test_the_contact_carries_phone_and_email_as_the_settings_allow() -> None:
    full = envelope.contact_json(
        _contact(), 4400001, ContactDisclosure(Disclosure.FULL, Disclosure.FULL)
    )
    assert full == {
        "id": 4400001,
        "name": "Maria Souza",
        "phone": "+5511987654321",
        "email": "maria.souza@gmail.com",
    }
    default = envelope.contact_json(_contact(), 4400001, ContactDisclosure())
    assert default is not None
    assert (default["phone"], default["email"]) == ("+55 11 9****-**21", "m***@g***.com")
    omitted = envelope.contact_json(
        _contact(), 4400001, ContactDisclosure(Disclosure.OMIT, Disclosure.OMIT)
    )
    assert omitted is not None
    assert (omitted["phone"], omitted["email"]) == (None, None), "the keys stay, as null"
    assert "98765" not in str(default) and "souza" not in str(default)


def test_disclosure_settings_default_to_masked_and_refuse_unknown_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("N8N_CONTACT_PHONE", raising=False)
    monkeypatch.delenv("N8N_CONTACT_EMAIL", raising=False)
    assert ContactPrivacySettings(_env_file=None).contact_disclosure == ContactDisclosure(
        Disclosure.MASKED, Disclosure.MASKED
    )
    monkeypatch.setenv("N8N_CONTACT_PHONE", " Full ")
    monkeypatch.setenv("N8N_CONTACT_EMAIL", "omit")
    chosen = ContactPrivacySettings(_env_file=None).contact_disclosure
    assert chosen == ContactDisclosure(Disclosure.FULL, Disclosure.OMIT)
    monkeypatch.setenv("N8N_CONTACT_PHONE", "hidden")
    with pytest.raises(ValidationError, match="n8n_contact_phone"):
        ContactPrivacySettings(_env_file=None)


def test_the_bridges_reply_field_is_never_among_the_leads_fields() -> None:
    lead = gw.Lead(
        id=9100001,
        name="Aposentadoria",
        custom_fields=[
            gw.CustomField(field_id=800001, field_name="Área", values=["previdenciario"]),
            gw.CustomField(field_id=REPLY_FIELD, field_name="Resposta do bot", values=["Olá!"]),
            gw.CustomField(field_id=800002, field_code="ORIGEM", values=["site", "whatsapp"]),
        ],
    )
    shown = envelope.lead_json(lead, 9100001, reply_field_id=REPLY_FIELD)
    assert shown is not None
    assert shown["custom_fields"] == {"Área": "previdenciario", "ORIGEM": ["site", "whatsapp"]}
    unset = envelope.lead_json(lead, 9100001, reply_field_id=0)
    assert unset is not None
    assert "Resposta do bot" in unset["custom_fields"], "no reply field configured: all shown"


def test_only_the_lead_fields_allowed_for_n8n_are_in_the_envelope() -> None:
    lead = gw.Lead(
        id=9100001,
        custom_fields=[
            gw.CustomField(field_id=800001, field_name="Área", values=["previdenciario"]),
            gw.CustomField(field_id=800002, field_code="ORIGEM", values=["site"]),
            gw.CustomField(field_id=800003, field_name="CPF", values=["123.456.789-00"]),
            gw.CustomField(field_id=REPLY_FIELD, field_name="Resposta do bot", values=["Olá!"]),
        ],
    )

    def fields(allowed: frozenset[str] | None) -> dict[str, object]:
        shown = envelope.lead_json(lead, 9100001, reply_field_id=REPLY_FIELD, lead_fields=allowed)
        assert shown is not None
        return dict(shown["custom_fields"])

    # By name, by code, by id; the reply field never, even when named.
    assert fields(frozenset({"Área", "ORIGEM", str(REPLY_FIELD)})) == {
        "Área": "previdenciario",
        "ORIGEM": "site",
    }
    assert fields(frozenset({"800003"})) == {"CPF": "123.456.789-00"}
    assert fields(frozenset()) == {}
    assert set(fields(None)) == {"Área", "ORIGEM", "CPF"}


def test_a_scheduling_envelope_says_how_to_message_the_customer_and_report_the_status() -> None:
    answers = domain.callbacks("https://bridge.example.com/", "abc123", 9100018)
    assert answers["callback"] == {
        "url": "https://bridge.example.com/send-response",
        "reply_token": None,
        "lead_id": 9100018,
        "idempotency_key": "agendamento:abc123",
    }
    assert answers["status_callback"] == {
        "url": "https://bridge.example.com/agendamento/abc123/status",
        "method": "POST",
        "statuses": ["confirmed", "failed"],
    }
    assert (
        domain.callbacks("https://b", "other", 9100018)["callback"]["idempotency_key"]
        != (answers["callback"]["idempotency_key"])
    ), "one confirmation per agendamento"
