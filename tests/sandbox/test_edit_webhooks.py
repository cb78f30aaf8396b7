"""A lead or contact edited through the API is told as Kommo tells it, to the hooks
subscribed to it: ``leads[update]`` (``update_lead``), ``leads[responsible]``
(``responsible_lead``) when the responsible user changed, and their contact twins, in
Kommo's form encoding, a moment after the answer. A hook that did not ask hears nothing."""

from __future__ import annotations

import urllib.parse

import pytest

from services.conversation.kommo_form import nest, parse_form
from services.conversation.webhook_events import parse_webhook
from tests.sandbox.kommo_app import CONTACT, LEAD, REPLY_FIELD, Kommo

HOOK = "http://bridge.test/webhooks/kommo?secret=registered"
EDITS = ["update_lead", "responsible_lead", "update_contact", "responsible_contact"]
NEW_VENDEDOR = 10000005


async def subscribe(kommo: Kommo, headers: dict[str, str], settings: list[str]) -> None:
    answer = await kommo.client.post(
        "/api/v4/webhooks", headers=headers, json={"destination": HOOK, "settings": settings}
    )
    assert answer.status_code == 201, answer.text


def told(kommo: Kommo) -> list[dict[str, str]]:
    """The bodies POSTed to the subscribed hook, in order."""
    return [
        dict(urllib.parse.parse_qsl(hook.content.decode()))
        for hook in kommo.webhooks
        if str(hook.url) == HOOK
    ]


async def test_a_new_responsible_user_is_told_as_an_update_and_a_handover(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await subscribe(kommo, headers, EDITS)
    answer = await kommo.client.patch(
        f"/api/v4/leads/{LEAD}", headers=headers, json={"responsible_user_id": NEW_VENDEDOR}
    )
    assert answer.status_code == 200, answer.text
    await kommo.settled()

    update, handover = told(kommo)
    assert update["leads[update][0][id]"] == str(LEAD)
    assert update["leads[update][0][responsible_user_id]"] == str(NEW_VENDEDOR)
    assert update["account[subdomain]"] == kommo.config.subdomain
    assert handover["leads[responsible][0][id]"] == str(LEAD)
    assert handover["leads[responsible][0][responsible_user_id]"] == str(NEW_VENDEDOR)
    for hook in kommo.webhooks:
        assert hook.headers["content-type"] == "application/x-www-form-urlencoded"
        # What the bridge reads of it: the lead whose copies must go.
        parsed = parse_webhook(nest(parse_form(hook.content, 1000)), kommo.config.subdomain)
        assert (parsed.changed_lead_ids, parsed.skipped) == ([LEAD], [])


async def test_a_field_write_is_an_update_with_the_fields_as_they_are_now(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await subscribe(kommo, headers, EDITS)
    await kommo.set_reply(headers, "Olá!")
    await kommo.settled()

    [update] = told(kommo)  # the responsible user did not change: no handover
    [reply_field] = [
        key
        for key, value in update.items()
        if key.startswith("leads[update][0][custom_fields]")
        and key.endswith("[id]")
        and value == str(REPLY_FIELD)
    ]
    assert update[reply_field.replace("[id]", "[values][0][value]")] == "Olá!"


async def test_leads_edited_in_one_request_share_one_body(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await subscribe(kommo, headers, ["update_lead"])
    answer = await kommo.client.patch(
        "/api/v4/leads",
        headers=headers,
        json=[{"id": LEAD, "name": "Revisão"}, {"id": LEAD + 1, "price": 1500}],
    )
    assert answer.status_code == 200, answer.text
    await kommo.settled()

    [update] = told(kommo)
    assert (update["leads[update][0][id]"], update["leads[update][0][name]"]) == (
        str(LEAD),
        "Revisão",
    )
    assert (update["leads[update][1][id]"], update["leads[update][1][price]"]) == (
        str(LEAD + 1),
        "1500",
    )


@pytest.mark.parametrize("one_by_one", [True, False])
async def test_an_edited_contact_is_told_as_a_contact_update(
    kommo: Kommo, one_by_one: bool
) -> None:
    headers = await kommo.auth()
    await subscribe(kommo, headers, EDITS)
    change = {"name": "Maria Souza Lima", "responsible_user_id": NEW_VENDEDOR}
    answer = await (
        kommo.client.patch(f"/api/v4/contacts/{CONTACT}", headers=headers, json=change)
        if one_by_one
        else kommo.client.patch(
            "/api/v4/contacts", headers=headers, json=[{"id": CONTACT, **change}]
        )
    )
    assert answer.status_code == 200, answer.text
    await kommo.settled()

    update, handover = told(kommo)
    assert update["contacts[update][0][id]"] == str(CONTACT)
    assert update["contacts[update][0][name]"] == "Maria Souza Lima"
    assert any(
        key.startswith("contacts[update][0][custom_fields]") and value.startswith("+55")
        for key, value in update.items()
    ), "the contact's phone, as it is now"
    assert handover["contacts[responsible][0][responsible_user_id]"] == str(NEW_VENDEDOR)
    parsed = parse_webhook(nest(parse_form(kommo.webhooks[0].content, 1000)))
    assert (parsed.changed_lead_ids, parsed.changed_contact_ids) == ([], [CONTACT])


async def test_an_edit_reaches_only_a_hook_that_asked_for_it(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Olá!")  # the configured bridge URL did not ask
    await subscribe(kommo, headers, ["add_message", "update_contact"])
    await kommo.set_reply(headers, "Tudo bem?")
    await kommo.settled()
    assert kommo.webhooks == []
