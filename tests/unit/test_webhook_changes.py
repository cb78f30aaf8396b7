"""Kommo's lead and contact change webhooks (edited, given another responsible user,
deleted) are read as the ids whose copies must go; a stage move is a lead change too. They
are not events to store, a body holding only them is valid, and an item without a usable id
is skipped and said why, like any other."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from services.common.errors import InvalidInput
from services.conversation.kommo_form import nest, parse_form
from services.conversation.webhook_events import ParsedWebhook, parse_webhook
from tests.unit.test_kommo_form import KOMMO_MESSAGE

ACCOUNT = {"account[subdomain]": "previdas", "account[id]": "30000001"}


def _parse(fields: dict[str, str]) -> ParsedWebhook:
    return parse_webhook(nest(parse_form(urlencode(fields).encode(), 1000)), "previdas")


@pytest.mark.parametrize("action", ["update", "responsible", "delete"])
def test_a_body_of_lead_and_contact_changes_only_is_valid_and_names_them(action: str) -> None:
    parsed = _parse(
        {
            **ACCOUNT,
            f"leads[{action}][0][id]": "9100001",
            f"leads[{action}][0][responsible_user_id]": "8000002",
            f"leads[{action}][1][id]": "9100002",
            f"contacts[{action}][0][id]": "4400001",
            f"contacts[{action}][0][name]": "Maria Souza",
        }
    )
    assert parsed.changed_lead_ids == [9100001, 9100002]
    assert parsed.changed_contact_ids == [4400001]
    # Nothing to store: the next turn reads the lead and the contact as they are now.
    assert (parsed.messages, parsed.leads, parsed.ignored, parsed.skipped) == ([], [], 0, [])


def test_a_stage_move_is_a_lead_change_and_each_id_is_named_once() -> None:
    parsed = _parse(
        {
            **ACCOUNT,
            "leads[status][0][id]": "9100003",
            "leads[status][0][status_id]": "71000002",
            "leads[update][0][id]": "9100003",
            "leads[responsible][0][id]": "9100004",
            "leads[update][1][id]": "9100004",
            "leads[add][0][id]": "9100005",
        }
    )
    assert parsed.changed_lead_ids == [9100003, 9100004]
    assert [(e.kind, e.lead_id) for e in parsed.leads] == [("status", 9100003), ("add", 9100005)]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"leads[update][1][name]": "sem id"}, "missing_id"),
        ({"leads[update][1][id]": "0"}, "bad_id"),
        ({"leads[responsible][1][id]": "-4"}, "bad_id"),
        ({"contacts[update][1][id]": "9" * 30}, "bad_id"),
        ({"contacts[delete][1]": "4400002"}, "not_a_group"),
        ({"contacts[delete]": "4400002"}, "not_a_list"),
    ],
)
def test_a_change_without_a_usable_id_is_skipped_and_the_rest_is_kept(
    item: dict[str, str], reason: str
) -> None:
    parsed = _parse({**KOMMO_MESSAGE, "leads[update][0][id]": "9100001", **item})
    assert [m.message_id for m in parsed.messages] == [KOMMO_MESSAGE["message[add][0][id]"]]
    assert parsed.changed_lead_ids == [9100001]
    assert parsed.changed_contact_ids == []
    assert [s.reason for s in parsed.skipped] == [reason]
    for skipped in parsed.skipped:
        # What is logged names fields, never the values a sender wrote.
        for value in item.values():
            assert value not in skipped.field


def test_a_body_whose_only_changes_are_invalid_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"no valid Kommo event.*leads\[update\]\[0\]\[id\]"):
        _parse({**ACCOUNT, "leads[update][0][name]": "sem id"})


def test_changes_of_other_entities_are_ignored_not_read() -> None:
    parsed = _parse(
        {**ACCOUNT, "companies[update][0][id]": "5500001", "tasks[delete][0][id]": "77"}
    )
    assert (parsed.changed_lead_ids, parsed.changed_contact_ids, parsed.ignored) == ([], [], 2)
