"""One range for Kommo ids, checked wherever an id comes in as text: the webhook form and
the vendedor's `/assumir N` command."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from services.common.errors import InvalidInput
from services.common.kommo_ids import KOMMO_ID_MAX, is_kommo_id, parse_kommo_id
from services.conversation.bot import parse_command
from services.conversation.kommo_form import nest, parse_form
from services.conversation.webhook_events import parse_webhook

OUT_OF_RANGE = ["0", "-5", str(KOMMO_ID_MAX + 1), "1" + "0" * 30, "9" * 5000]
NOT_NUMBERS = ["", "12a", "²", "١٢", "1.5", " 7", "0x10"]


def test_the_range_is_javascripts_safe_integers_so_n8n_reads_ids_unchanged() -> None:
    assert KOMMO_ID_MAX == 9_007_199_254_740_991
    assert is_kommo_id(1) and is_kommo_id(KOMMO_ID_MAX)
    assert not is_kommo_id(0) and not is_kommo_id(KOMMO_ID_MAX + 1)
    # And every id in it fits the protos' int64 fields.
    assert KOMMO_ID_MAX < 2**63


@pytest.mark.parametrize("text", ["1", "9100001", "0009100001", str(KOMMO_ID_MAX)])
def test_ids_in_the_range_are_read(text: str) -> None:
    assert parse_kommo_id(text, "lead id") == int(text)


@pytest.mark.parametrize("text", OUT_OF_RANGE + NOT_NUMBERS)
def test_anything_else_is_refused_naming_the_field_and_the_range(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_kommo_id(text, "message[add][0][element_id]")
    message = str(refused.value)
    assert message.startswith("message[add][0][element_id] must be an integer from 1 to ")
    assert str(KOMMO_ID_MAX) in message
    assert len(message) < 200  # a 5,000-digit id is not echoed back


@pytest.mark.parametrize("lead", ["99999999999999999999999", "-5", "0", "²"])
def test_assumir_with_an_id_outside_kommos_range_is_invalid_input(lead: str) -> None:
    with pytest.raises(InvalidInput, match=r"/assumir: the lead id must be an integer from 1"):
        parse_command(f"/assumir {lead}", "/assumir", "/liberar")


def test_commands_with_a_valid_id_or_none_still_parse() -> None:
    assert parse_command("/assumir 9100001", "/assumir", "/liberar") == parse_command(
        "/ASSUMIR #9100001", "/assumir", "/liberar"
    )
    command = parse_command("/liberar", "/assumir", "/liberar")
    assert command is not None and (command.action, command.lead_id) == ("resume", 0)
    assert parse_command("oi, tudo bem?", "/assumir", "/liberar") is None


def _message(**fields: str) -> dict[str, str]:
    base = {
        "account[subdomain]": "previdas",
        "message[add][0][id]": "m-1",
        "message[add][0][chat_id]": "chat-1",
        "message[add][0][element_type]": "2",
        "message[add][0][entity_type]": "lead",
        "message[add][0][element_id]": "9100001",
        "message[add][0][contact_id]": "4400123",
        "message[add][0][talk_id]": "5210",
        "message[add][0][created_at]": "1764000000",
    }
    return base | {f"message[add][0][{key}]": value for key, value in fields.items()}


def _parse(fields: dict[str, str]) -> object:
    return parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000)))


@pytest.mark.parametrize("field", ["element_id", "entity_id", "contact_id", "talk_id"])
@pytest.mark.parametrize("value", ["-5", "1" + "0" * 30, str(KOMMO_ID_MAX + 1)])
def test_a_webhook_with_an_id_outside_kommos_range_is_refused(field: str, value: str) -> None:
    fields = _message(**{field: value})
    if field == "entity_id":
        del fields["message[add][0][element_id]"]
    with pytest.raises(InvalidInput, match=rf"message\[add\]\[0\]\[{field}\] must be an integer"):
        _parse(fields)


def test_a_lead_event_with_an_id_outside_the_range_or_zero_is_refused() -> None:
    for value in ("0", "-1", "1" + "0" * 30):
        with pytest.raises(InvalidInput, match=r"leads\[add\]\[0\]\[id\] must be an integer"):
            _parse({"leads[add][0][id]": value})
    with pytest.raises(InvalidInput, match=r"leads\[status\]\[0\]\[status_id\]"):
        _parse({"leads[status][0][id]": "9100001", "leads[status][0][status_id]": "-3"})


def test_zero_reads_as_absent_where_kommo_writes_it_for_none() -> None:
    parsed = parse_webhook(
        nest(parse_form(urlencode(_message(contact_id="0", talk_id="0")).encode(), 1000))
    )
    assert (parsed.messages[0].contact_id, parsed.messages[0].talk_id) == (0, 0)
    assert parsed.messages[0].lead_id == 9100001
    lead = parse_webhook(nest(parse_form(b"leads[add][0][id]=7&leads[add][0][old_status_id]=0", 9)))
    assert lead.leads[0].old_status_id == 0


@pytest.mark.parametrize("value", ["-1", "999999999999999", "1" + "0" * 40])
def test_a_time_no_date_can_show_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"created_at\] must be an integer from 0 to"):
        _parse(_message(created_at=value))
