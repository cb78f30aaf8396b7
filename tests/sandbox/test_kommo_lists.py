"""The sandbox's list calls answer as docs/kommo-api.md's "List calls" says Kommo's do: many
entities in one request, each item answered by its request_id, a refused item refusing the
whole request, per-request maximums, and one request against the rate limit."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
import pytest

from tests.sandbox.kommo_app import LEAD, REPLY_FIELD, Kommo, OpenKommo

AREA_FIELD = 900002
UNKNOWN_LEAD = 9199999


def id_filter(ids: list[int], **more: str) -> httpx.QueryParams:
    return httpx.QueryParams([("filter[id][]", str(entity_id)) for entity_id in ids]).merge(more)


def reply_patch(lead_id: int, text: str, **more: Any) -> dict[str, Any]:
    return {
        "id": lead_id,
        "custom_fields_values": [{"field_id": REPLY_FIELD, "values": [{"value": text}]}],
        **more,
    }


def refused_request_ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return [entry["request_id"] for entry in answer.json()["validation-errors"]]


def note(lead_id: int, text: str, **more: Any) -> dict[str, Any]:
    return {"entity_id": lead_id, "note_type": "common", "params": {"text": text}, **more}


def task(lead_id: int, text: str, **more: Any) -> dict[str, Any]:
    return {
        "text": text,
        "complete_till": 1800000000,
        "entity_id": lead_id,
        "entity_type": "leads",
        "task_type_id": 1,
        **more,
    }


async def reply_field(kommo: Kommo, lead_id: int) -> str:
    lead = (await kommo.client.get(f"/_sandbox/leads/{lead_id}")).json()["lead"]
    for value in lead["custom_fields_values"] or []:
        if value["field_id"] == REPLY_FIELD:
            return str(value["values"][0]["value"])
    return ""


# --- Reads ---------------------------------------------------------------------------------


async def test_leads_by_ids_with_contacts_leave_unknown_ids_out(kommo: Kommo) -> None:
    headers = await kommo.auth()
    answer = await kommo.client.get(
        "/api/v4/leads",
        params=id_filter([9100003, UNKNOWN_LEAD, 9100001, 9100002], **{"with": "contacts"}),
        headers=headers,
    )
    assert answer.status_code == 200
    leads = answer.json()["_embedded"]["leads"]
    assert sorted(lead["id"] for lead in leads) == [9100001, 9100002, 9100003]
    assert {lead["id"]: lead["_embedded"]["contacts"][0]["id"] for lead in leads} == {
        9100001: 4400001,
        9100002: 4400002,
        9100003: 4400003,
    }


async def test_leads_by_ids_none_known_answers_204_without_body(kommo: Kommo) -> None:
    answer = await kommo.client.get(
        "/api/v4/leads", params=id_filter([UNKNOWN_LEAD]), headers=await kommo.auth()
    )
    assert answer.status_code == 204 and answer.content == b""


async def test_lead_list_serves_at_most_250_a_page(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(leads=260)
    ids = list(range(9100001, 9100261))
    headers = await kommo.auth()
    first = await kommo.client.get(
        "/api/v4/leads", params=id_filter(ids, limit="500"), headers=headers
    )
    assert len(first.json()["_embedded"]["leads"]) == 250
    second = await kommo.client.get(first.json()["_links"]["next"]["href"], headers=headers)
    assert [lead["id"] for lead in second.json()["_embedded"]["leads"]] == ids[250:]


async def test_contacts_by_ids(kommo: Kommo) -> None:
    answer = await kommo.client.get(
        "/api/v4/contacts",
        params=id_filter([4400002, 4499999, 4400005], limit="250"),
        headers=await kommo.auth(),
    )
    contacts = answer.json()["_embedded"]["contacts"]
    assert sorted(contact["id"] for contact in contacts) == [4400002, 4400005]
    assert all(contact["custom_fields_values"][0]["field_code"] == "PHONE" for contact in contacts)


# --- Lead PATCH ----------------------------------------------------------------------------


async def test_lead_patch_list_answers_each_item_with_its_request_id(kommo: Kommo) -> None:
    answer = await kommo.client.patch(
        "/api/v4/leads",
        json=[reply_patch(9100001, "Primeira"), reply_patch(9100002, "Segunda", request_id="b")],
        headers=await kommo.auth(),
    )
    assert answer.status_code == 200
    assert [(lead["id"], lead["request_id"]) for lead in answer.json()["_embedded"]["leads"]] == [
        (9100001, "0"),
        (9100002, "b"),
    ]
    assert [await reply_field(kommo, 9100001), await reply_field(kommo, 9100002)] == [
        "Primeira",
        "Segunda",
    ]


async def test_lead_patch_list_with_a_refused_item_applies_none(kommo: Kommo) -> None:
    bad_area = {
        "id": 9100003,
        "custom_fields_values": [{"field_id": AREA_FIELD, "values": [{"value": "astrologia"}]}],
    }
    answer = await kommo.client.patch(
        "/api/v4/leads",
        json=[reply_patch(9100001, "Não aplicar"), bad_area, reply_patch(UNKNOWN_LEAD, "x")],
        headers=await kommo.auth(),
    )
    assert refused_request_ids(answer) == ["1", "2"]
    assert answer.json()["validation-errors"][1]["errors"][0]["code"] == "NotFound"
    assert await reply_field(kommo, 9100001) == ""


async def test_lead_patch_list_of_more_than_50_is_refused_whole(kommo: Kommo) -> None:
    items = [reply_patch(9100000 + (n % 20) + 1, f"resposta {n}") for n in range(51)]
    headers = await kommo.auth()
    answer = await kommo.client.patch("/api/v4/leads", json=items, headers=headers)
    # The items past the maximum are named, so the first 50 can be sent again alone.
    assert refused_request_ids(answer) == ["50"]
    assert await reply_field(kommo, 9100001) == ""
    fits = await kommo.client.patch("/api/v4/leads", json=items[:50], headers=headers)
    assert fits.status_code == 200 and len(fits.json()["_embedded"]["leads"]) == 50


# --- Notes and tasks -----------------------------------------------------------------------


async def test_note_list_answers_each_item_with_its_request_id(kommo: Kommo) -> None:
    answer = await kommo.client.post(
        "/api/v4/leads/notes",
        json=[note(9100001, "um"), note(9100002, "dois", request_id="nota-2"), note(9100001, "3")],
        headers=await kommo.auth(),
    )
    assert answer.status_code == 200
    notes = answer.json()["_embedded"]["notes"]
    assert [(n["entity_id"], n["request_id"]) for n in notes] == [
        (9100001, "0"),
        (9100002, "nota-2"),
        (9100001, "2"),
    ]
    snapshot = (await kommo.client.get("/_sandbox/leads/9100001")).json()
    assert [n["params"]["text"] for n in snapshot["notes"]] == ["um", "3"]


async def test_note_list_with_a_refused_item_writes_none(kommo: Kommo) -> None:
    answer = await kommo.client.post(
        "/api/v4/leads/notes",
        json=[note(9100001, "válida"), note(UNKNOWN_LEAD, "lead inexistente", request_id="x")],
        headers=await kommo.auth(),
    )
    assert refused_request_ids(answer) == ["x"]
    assert (await kommo.client.get("/_sandbox/leads/9100001")).json()["notes"] == []


async def test_note_list_of_more_than_50_is_refused_whole(kommo: Kommo) -> None:
    items = [note(LEAD, f"nota {n}") for n in range(52)]
    answer = await kommo.client.post("/api/v4/leads/notes", json=items, headers=await kommo.auth())
    assert refused_request_ids(answer) == ["50", "51"]
    assert (await kommo.client.get(f"/_sandbox/leads/{LEAD}")).json()["notes"] == []


async def test_task_list_answers_each_item_and_refuses_as_a_whole(kommo: Kommo) -> None:
    headers = await kommo.auth()
    refused = await kommo.client.post(
        "/api/v4/tasks",
        json=[task(9100001, "Ligar"), task(9100002, "Reunião", task_type_id=99)],
        headers=headers,
    )
    assert refused_request_ids(refused) == ["1"]
    too_many = await kommo.client.post(
        "/api/v4/tasks", json=[task(LEAD, f"t{n}") for n in range(51)], headers=headers
    )
    assert refused_request_ids(too_many) == ["50"]
    assert (await kommo.client.get("/_sandbox/leads/9100001")).json()["tasks"] == []

    answer = await kommo.client.post(
        "/api/v4/tasks",
        json=[task(9100001, "Ligar"), task(9100002, "Reunião", request_id="r")],
        headers=headers,
    )
    assert [t["request_id"] for t in answer.json()["_embedded"]["tasks"]] == ["0", "r"]
    snapshot = (await kommo.client.get("/_sandbox/leads/9100002")).json()
    assert [t["text"] for t in snapshot["tasks"]] == ["Reunião"]


# --- Salesbot runs -------------------------------------------------------------------------


async def test_bot_run_list_sends_each_lead_its_own_field_and_echoes_it(kommo: Kommo) -> None:
    headers = await kommo.auth()
    leads = [9100001, 9100002, 9100003]
    await kommo.client.patch(
        "/api/v4/leads",
        json=[reply_patch(lead_id, f"Resposta para {lead_id}") for lead_id in leads],
        headers=headers,
    )
    runs = [
        {"bot_id": kommo.config.salesbot_id, "entity_id": lead_id, "entity_type": "leads"}
        for lead_id in leads
    ]
    answer = await kommo.client.post("/api/v4/bots/run", json=runs, headers=headers)
    assert answer.status_code == 202
    assert answer.headers["content-type"].startswith("text/html") and answer.text == "Accepted"

    await kommo.settled()
    for lead_id in leads:
        assert [m["text"] for m in await kommo.chat(lead_id)] == [f"Resposta para {lead_id}"]
    echoes = [dict(urllib.parse.parse_qsl(hook.content.decode())) for hook in kommo.webhooks]
    assert sorted(
        (int(echo["message[add][0][element_id]"]), echo["message[add][0][text]"])
        for echo in echoes
        if echo["message[add][0][type]"] == "outgoing"
    ) == [(lead_id, f"Resposta para {lead_id}") for lead_id in leads]


async def test_bot_run_list_of_more_than_100_is_refused_and_runs_nothing(kommo: Kommo) -> None:
    headers = await kommo.auth()
    runs = [
        {"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"}
        for _ in range(101)
    ]
    answer = await kommo.client.post("/api/v4/bots/run", json=runs, headers=headers)
    assert refused_request_ids(answer) == ["100"]
    wrong_type = await kommo.client.post(
        "/api/v4/bots/run", json=[runs[0], {**runs[0], "entity_type": "companies"}], headers=headers
    )
    assert refused_request_ids(wrong_type) == ["1"]
    assert (await kommo.client.get("/_sandbox/salesbot-runs")).json() == []
    assert (
        await kommo.client.post("/api/v4/bots/run", json=runs[:100], headers=headers)
    ).is_success


# --- The rate limit ------------------------------------------------------------------------


async def test_each_list_call_counts_as_one_request(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(rate_limit_rps=3)
    # The token exchange is one of the 3 requests this second.
    headers = await kommo.auth()
    notes = await kommo.client.post(
        "/api/v4/leads/notes", json=[note(LEAD, f"n{n}") for n in range(50)], headers=headers
    )
    leads = await kommo.client.get(
        "/api/v4/leads", params=id_filter(list(range(9100001, 9100021))), headers=headers
    )
    refused = await kommo.client.get("/api/v4/account", headers=headers)
    assert [notes.status_code, leads.status_code, refused.status_code] == [200, 200, 429]
    assert len(leads.json()["_embedded"]["leads"]) == 20
    with pytest.raises(ValueError):
        json.loads(refused.text)
    assert (await kommo.client.get("/_sandbox/stats")).json()["rate_limited_429"] == 1


# --- Events --------------------------------------------------------------------------------


async def test_events_say_who_wrote_and_carry_no_text(kommo: Kommo) -> None:
    headers = await kommo.auth()
    written = await kommo.client.post(
        "/_sandbox/user-message",
        json={"lead_id": LEAD, "user_id": 10000002, "text": "Oi, aqui é o Bruno"},
    )
    await kommo.set_reply(headers, "Resposta do bot")
    await kommo.client.post(
        "/api/v4/bots/run",
        json={"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"},
        headers=headers,
    )
    await kommo.settled()
    query = httpx.QueryParams(
        {
            "filter[entity]": "lead",
            "filter[entity_id][]": str(LEAD),
            "filter[type][]": "outgoing_chat_message",
        }
    )
    events = (await kommo.client.get("/api/v4/events", params=query, headers=headers)).json()
    bot_message, user_message = events["_embedded"]["events"]  # newest first
    assert user_message["created_by"] == 10000002 and bot_message["created_by"] == 0
    assert user_message["value_after"] == [
        {"message": {"id": written.json()["message_id"], "origin": "waba", "talk_id": 5201}}
    ]
    assert "text" not in bot_message["value_after"][0]["message"]
    by_bot = await kommo.client.get(
        "/api/v4/events", params=query.add("filter[created_by][]", "0"), headers=headers
    )
    assert [e["id"] for e in by_bot.json()["_embedded"]["events"]] == [bot_message["id"]]
    later = await kommo.client.get(
        "/api/v4/events",
        params=query.add("filter[created_at][from]", str(bot_message["created_at"] + 1)),
        headers=headers,
    )
    assert later.status_code == 204


async def test_events_come_at_most_100_a_page(kommo: Kommo) -> None:
    seeded = sum(
        1
        for e in (await kommo.client.get("/_sandbox/events")).json()
        if e["type"] == "incoming_chat_message"
    )
    assert 0 < seeded < 100
    for n in range(101):
        await kommo.client.post(
            "/_sandbox/customer-message", json={"lead_id": LEAD, "text": f"mensagem {n}"}
        )
    headers = await kommo.auth()
    query = {"filter[type][]": "incoming_chat_message", "limit": "250"}
    first = await kommo.client.get("/api/v4/events", params=query, headers=headers)
    assert len(first.json()["_embedded"]["events"]) == 100
    second = await kommo.client.get(first.json()["_links"]["next"]["href"], headers=headers)
    # 101 written here, and the seed's: when each seeded lead's customer last wrote.
    assert len(second.json()["_embedded"]["events"]) == 101 + seeded - 100


# --- Faults --------------------------------------------------------------------------------


async def test_a_5xx_awaiting_the_effect_answers_after_the_message_is_sent(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Enviada antes do erro")
    rule = {"path_prefix": "/api/v4/bots/run", "status": 502, "apply_effect": True}
    refused = await kommo.client.post(
        "/_sandbox/faults",
        json={"fail_next": [{**rule, "apply_effect": False, "await_effect": True}]},
    )
    assert refused.status_code == 400
    await kommo.client.post(
        "/_sandbox/faults", json={"fail_next": [{**rule, "await_effect": True}]}
    )
    run = {"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"}
    answer = await kommo.client.post("/api/v4/bots/run", json=run, headers=headers)
    assert answer.status_code == 502
    # No settling: the message was in the chat, and echoed, before the 502 was answered.
    assert [m["text"] for m in await kommo.chat(LEAD)] == ["Enviada antes do erro"]
    assert len(kommo.webhooks) == 1
