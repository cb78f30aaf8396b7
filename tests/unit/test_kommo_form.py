"""The webhook form parser: the same pairs as the standard library, a clear error for
anything that is not a Kommo webhook."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.conversation.kommo_form import nest, parse_form
from services.conversation.webhook_events import MessageEvent, parse_webhook

KOMMO_MESSAGE = {
    "account[subdomain]": "previdas",
    "account[id]": "30000001",
    "message[add][0][id]": "7f1c2a9e-0000-4000-8000-000000000001",
    "message[add][0][chat_id]": "3c9d0000-uuid",
    "message[add][0][talk_id]": "5210",
    "message[add][0][contact_id]": "4400123",
    "message[add][0][text]": "Oi, queria saber sobre aposentadoria & revisão 100%",
    "message[add][0][created_at]": "1764000000",
    "message[add][0][element_type]": "2",
    "message[add][0][element_id]": "9100456",
    "message[add][0][entity_type]": "lead",
    "message[add][0][entity_id]": "9100456",
    "message[add][0][type]": "incoming",
    "message[add][0][author][id]": "a1b2",
    "message[add][0][author][type]": "external",
    "message[add][0][author][name]": "Maria Souza",
    "message[add][0][origin]": "waba",
    "message[add][0][message_type]": "text",
}


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_parse_form_agrees_with_parse_qsl_on_any_text(text: str) -> None:
    assert parse_form(text.encode(), 10_000) == parse_qsl(text, keep_blank_values=True)


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=60)), max_size=40))
def test_parse_form_agrees_with_parse_qsl_on_encoded_forms(pairs: list[tuple[str, str]]) -> None:
    body = urlencode(pairs, quote_via=quote_plus)
    assert parse_form(body.encode(), 10_000) == parse_qsl(body, keep_blank_values=True)


@given(st.binary(max_size=300))
def test_parse_form_never_fails_on_bytes(body: bytes) -> None:
    parse_form(body, 10_000)


def test_a_kommo_message_becomes_a_typed_event() -> None:
    parsed = parse_webhook(nest(parse_form(urlencode(KOMMO_MESSAGE).encode(), 1000)))
    assert parsed.subdomain == "previdas"
    [event] = parsed.messages
    assert event.message_id == "7f1c2a9e-0000-4000-8000-000000000001"
    assert event.lead_id == 9100456
    assert event.talk_id == 5210
    assert event.contact_id == 4400123
    assert event.text == "Oi, queria saber sobre aposentadoria & revisão 100%"
    assert event.created_at == 1764000000
    assert event.from_customer
    assert event.attachment is None


def test_several_messages_and_media_in_one_body() -> None:
    fields = dict(KOMMO_MESSAGE)
    for key, value in KOMMO_MESSAGE.items():
        if key.startswith("message[add][0]"):
            fields[key.replace("[0]", "[1]")] = value
    fields["message[add][1][id]"] = "second"
    fields["message[add][1][text]"] = ""
    fields["message[add][1][message_type]"] = "voice"
    fields["message[add][1][attachment][type]"] = "voice"
    fields["message[add][1][attachment][link]"] = "https://cdn.example/audio.ogg"
    parsed = parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000)))
    assert [m.message_id for m in parsed.messages] == [fields["message[add][0][id]"], "second"]
    voice = parsed.messages[1]
    assert voice.message_type == "voice"
    assert voice.attachment is not None and voice.attachment.link.endswith("audio.ogg")


def test_lead_events_become_typed_events_and_other_kinds_are_ignored() -> None:
    body = urlencode(
        {
            "account[subdomain]": "previdas",
            "leads[add][0][id]": "1",
            "leads[status][0][id]": "2",
            "leads[status][0][status_id]": "71000002",
            "leads[status][0][old_status_id]": "71000001",
            "tasks[add][0][id]": "3",
        }
    )
    parsed = parse_webhook(nest(parse_form(body.encode(), 1000)))
    assert parsed.messages == []
    assert [(e.kind, e.lead_id, e.status_id) for e in parsed.leads] == [
        ("add", 1, 0),
        ("status", 2, 71000002),
    ]
    assert parsed.ignored == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"message[add][0][text]": "oi"}, "message[add][0][id] is missing"),
        ({"message[add][0][id]": "m"}, "neither chat_id nor a lead"),
        (
            {
                "message[add][0][id]": "m",
                "message[add][0][chat_id]": "c",
                "message[add][0][talk_id]": "x",
            },
            "message[add][0][talk_id] must be an integer",
        ),
        (
            {
                "message[add][0][id]": "m",
                "message[add][0][chat_id]": "c",
                "message[add][0][type]": "sideways",
            },
            "must be incoming or outgoing",
        ),
        ({"hello": "world"}, "not a Kommo webhook"),
        ({"message[add]": "flat"}, "must be a list of items"),
    ],
)
def test_malformed_webhooks_say_what_is_wrong(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000)))


def test_another_account_is_refused_when_the_subdomain_is_configured() -> None:
    tree = nest(parse_form(urlencode(KOMMO_MESSAGE).encode(), 1000))
    with pytest.raises(InvalidInput, match="this bridge serves 'outra'"):
        parse_webhook(tree, expected_subdomain="outra")


def test_more_than_the_field_limit_is_refused() -> None:
    body = "&".join(f"f{i}=1" for i in range(1001)).encode()
    with pytest.raises(InvalidInput, match="too many form fields"):
        parse_form(body, 1000)
    assert len(parse_form(body, 1001)) == 1001


def test_events_round_trip_through_their_stored_form() -> None:
    import dataclasses

    fields = dict(KOMMO_MESSAGE)
    fields["message[add][0][attachment][type]"] = "picture"
    fields["message[add][0][attachment][link]"] = "https://cdn.example/p.jpg"
    [event] = parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000))).messages
    assert event.to_dict() == dataclasses.asdict(event)
    assert MessageEvent.from_dict(event.to_dict()) == event
