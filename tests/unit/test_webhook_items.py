"""A webhook body is read item by item: what is valid is kept, what is not is skipped and
said why (never with its values), and the body is refused only when nothing in it is a
Kommo event. Shapes from bodies that real Kommo and amoCRM accounts sent."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.conversation import kommo_form
from services.conversation.kommo_form import nest, parse_form
from services.conversation.webhook_events import (
    MAX_TEXT_CHARS,
    TRUNCATION_MARK,
    ParsedWebhook,
    parse_webhook,
)
from tests.unit.test_kommo_form import KOMMO_MESSAGE


def _parse(fields: dict[str, str] | list[tuple[str, str]]) -> ParsedWebhook:
    return parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000)), "previdas")


def _second(**fields: str) -> dict[str, str]:
    return {f"message[add][1][{k}]": v for k, v in fields.items()}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"foo": "bar"}, "unexpected_field"),
        ({"leads[delete]": "123"}, "not_a_list"),
        (_second(chat_id="c2", text="sem id"), "missing_id"),
        (_second(id="m2", type="outgoing", text="sem chat"), "no_chat_or_lead"),
        (_second(id="m2", chat_id="c2", type="sideways"), "bad_direction"),
        (_second(id="m2", chat_id="c2", talk_id="-1"), "bad_id"),
        (_second(id="m2", chat_id="c2", created_at="ontem"), "bad_time"),
        ({"message[add][1]": "flat"}, "not_a_group"),
        ({"leads[add][0][name]": "no id"}, "missing_id"),
        ({"foo[bar": "unbalanced"}, "unexpected_field"),
    ],
)
def test_a_valid_message_is_kept_beside_what_is_not(extra: dict[str, str], reason: str) -> None:
    parsed = _parse({**KOMMO_MESSAGE, **extra})
    assert [m.message_id for m in parsed.messages] == [KOMMO_MESSAGE["message[add][0][id]"]]
    assert [s.reason for s in parsed.skipped] == [reason]
    for skipped in parsed.skipped:
        # What is logged names fields, never the values a customer or sender wrote.
        for value in extra.values():
            assert value not in skipped.field
        assert skipped.reason.isidentifier()


def test_nothing_valid_in_the_body_is_refused_with_every_reason() -> None:
    with pytest.raises(InvalidInput, match=r"no valid Kommo event.*\[id\] is missing"):
        _parse({"account[subdomain]": "previdas", "message[add][0][text]": "oi"})
    with pytest.raises(InvalidInput, match="not a Kommo webhook"):
        _parse({"foo": "bar"})
    # An account alone (Kommo's check of a new hook) is nothing to refuse.
    assert _parse({"account[subdomain]": "previdas"}).messages == []


def test_a_time_in_milliseconds_is_read_as_such() -> None:
    [event] = _parse({**KOMMO_MESSAGE, "message[add][0][created_at]": "1764000000123"}).messages
    assert event.created_at == 1764000000


def test_a_picture_without_message_type_is_a_picture() -> None:
    fields = {k: v for k, v in KOMMO_MESSAGE.items() if not k.endswith("[message_type]")}
    fields["message[add][0][attachment][type]"] = "picture"
    fields["message[add][0][attachment][link]"] = "https://cdn.example/p.jpg"
    [event] = _parse(fields).messages
    assert event.message_type == "picture"
    fields.pop("message[add][0][attachment][type]")
    fields.pop("message[add][0][attachment][link]")
    assert _parse(fields).messages[0].message_type == "text"


def test_a_chat_bound_to_a_contact_names_the_contact_not_a_lead() -> None:
    fields = {
        k: v
        for k, v in KOMMO_MESSAGE.items()
        if not k.endswith(("[contact_id]", "[entity_type]", "[entity_id]"))
    }
    fields["message[add][0][element_type]"] = "1"
    fields["message[add][0][element_id]"] = "4400999"
    [event] = _parse(fields).messages
    assert (event.lead_id, event.contact_id) == (0, 4400999)


def test_text_is_cut_at_whatsapps_maximum_and_marked() -> None:
    long_text = "a" * (MAX_TEXT_CHARS * 20)
    [event] = _parse({**KOMMO_MESSAGE, "message[add][0][text]": long_text}).messages
    assert len(event.text) == MAX_TEXT_CHARS
    assert event.text.endswith(TRUNCATION_MARK)
    assert event.truncated
    exact = "b" * MAX_TEXT_CHARS
    [event] = _parse({**KOMMO_MESSAGE, "message[add][0][text]": exact}).messages
    assert (event.text, event.truncated) == (exact, False)


def test_long_sender_chosen_keys_are_not_kept_by_the_parser_cache() -> None:
    kommo_form._decode_cached.cache_clear()
    kommo_form._split_cached.cache_clear()
    junk = [(f"x{i}[" + "k" * 5000 + "]", "v") for i in range(50)]
    _parse([*KOMMO_MESSAGE.items(), *junk])
    cached = kommo_form._decode_cached.cache_info().currsize
    assert cached <= len(KOMMO_MESSAGE)
    assert kommo_form._split_cached.cache_info().currsize <= len(KOMMO_MESSAGE)


_KNOWN = {
    "id",
    "chat_id",
    "talk_id",
    "contact_id",
    "text",
    "created_at",
    "element_type",
    "element_id",
    "entity_type",
    "entity_id",
    "type",
    "author",
    "origin",
    "message_type",
    "attachment",
}

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
_extra_key = st.one_of(
    # An unknown top-level field, flat or bracketed.
    st.builds(lambda a, b: f"{a}[{b}]", _names.filter(lambda n: n != "account"), _names),
    _names.filter(lambda n: n not in ("account", "message", "leads")),
    # A field Kommo may add to a message or its author one day.
    st.builds(lambda n: f"message[add][0][{n}]", _names.filter(lambda n: n not in _KNOWN)),
    # Another item of any shape, valid or not.
    st.builds(lambda i, n: f"message[add][{i}][{n}]", st.integers(1, 5).map(str), _names),
    st.builds(lambda a, n: f"leads[{a}][0][{n}]", _names, _names),
    st.builds(lambda a: f"unsorted[{a}]", _names),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_extra_key, st.text(max_size=20)), max_size=12))
def test_random_extra_fields_never_lose_the_valid_message(extra: list[tuple[str, str]]) -> None:
    parsed = _parse([*KOMMO_MESSAGE.items(), *extra])
    ids = [m.message_id for m in parsed.messages]
    assert KOMMO_MESSAGE["message[add][0][id]"] in ids
    [event] = [m for m in parsed.messages if m.message_id == KOMMO_MESSAGE["message[add][0][id]"]]
    assert event.text == KOMMO_MESSAGE["message[add][0][text]"]
    assert event.lead_id == 9100456
