"""A contact's leads, as Kommo lists them: `_embedded.leads` when `with=leads` is asked, on
both GET /api/v4/contacts/{id} and the list form, and only then; a contact with two leads
(a customer's second deal, made through /_sandbox/lead-event) lists both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.sandbox.kommo_app import CONTACT, LEAD, Kommo

SECOND_CONTACT = CONTACT + 1
SECOND_LEAD = LEAD + 1
WITH_LEADS = {"with": "leads"}


@dataclass
class Api:
    """Kommo's API of a sandbox, with one token pair (the seed's refresh token works once)."""

    kommo: Kommo
    headers: dict[str, str]

    async def get(self, path: str, params: httpx.QueryParams | dict[str, str]) -> Any:
        answer = await self.kommo.client.get(path, params=params, headers=self.headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def contact(self, contact_id: int, **params: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v4/contacts/{contact_id}", params)
        return body

    async def contacts(self, ids: list[int], **params: str) -> list[dict[str, Any]]:
        query = httpx.QueryParams([("filter[id][]", str(i)) for i in ids]).merge(params)
        contacts: list[dict[str, Any]] = (await self.get("/api/v4/contacts", query))["_embedded"][
            "contacts"
        ]
        return contacts


@pytest.fixture
async def api(kommo: Kommo) -> Api:
    return Api(kommo, await kommo.auth())


def lead_ids(contact: dict[str, Any]) -> list[int]:
    return [int(lead["id"]) for lead in contact["_embedded"]["leads"]]


async def test_a_contact_with_leads_names_its_lead_with_a_link(api: Api) -> None:
    body = await api.contact(CONTACT, **WITH_LEADS)
    href = f"{api.kommo.client.base_url}/api/v4/leads/{LEAD}"
    assert body["_embedded"]["leads"] == [{"id": LEAD, "_links": {"self": {"href": href}}}]


async def test_without_with_leads_a_contact_has_no_leads(api: Api) -> None:
    assert "leads" not in (await api.contact(CONTACT))["_embedded"]
    listed = await api.contacts([CONTACT, SECOND_CONTACT])
    assert len(listed) == 2
    assert all("leads" not in c["_embedded"] for c in listed)


async def test_contacts_by_ids_with_leads_each_name_their_own(api: Api) -> None:
    listed = await api.contacts([SECOND_CONTACT, CONTACT], **WITH_LEADS)
    assert {c["id"]: lead_ids(c) for c in listed} == {
        CONTACT: [LEAD],
        SECOND_CONTACT: [SECOND_LEAD],
    }


async def test_a_second_lead_of_a_contact_is_listed_on_both_forms(api: Api) -> None:
    kommo = api.kommo
    added = await kommo.client.post(
        "/_sandbox/lead-event", json={"kind": "add", "contact_id": CONTACT}
    )
    assert added.status_code == 200, added.text
    new_lead = int(added.json()["lead_id"])
    assert new_lead not in (LEAD, SECOND_LEAD)
    assert lead_ids(await api.contact(CONTACT, **WITH_LEADS)) == [LEAD, new_lead]
    listed = await api.contacts([CONTACT, SECOND_CONTACT], **WITH_LEADS)
    assert {c["id"]: lead_ids(c) for c in listed} == {
        CONTACT: [LEAD, new_lead],
        SECOND_CONTACT: [SECOND_LEAD],
    }
    # The new lead is the contact's: no new contact was made for it.
    lead = await api.get(f"/api/v4/leads/{new_lead}", {"with": "contacts"})
    assert [(c["id"], c["is_main"]) for c in lead["_embedded"]["contacts"]] == [(CONTACT, True)]
    assert len(kommo.sandbox.state.contacts) == kommo.config.leads


async def test_a_lead_for_an_unknown_contact_is_refused(kommo: Kommo) -> None:
    leads = len(kommo.sandbox.state.leads)
    unknown = await kommo.client.post(
        "/_sandbox/lead-event", json={"kind": "add", "contact_id": 4499999}
    )
    assert unknown.status_code == 404
    both = await kommo.client.post(
        "/_sandbox/lead-event", json={"kind": "add", "lead_id": LEAD, "contact_id": CONTACT}
    )
    assert both.status_code == 400
    assert len(kommo.sandbox.state.leads) == leads
