"""The sandbox enforces WhatsApp's 24-hour window and serves Kommo's chat templates, as
docs/kommo-api.md says WhatsApp and Kommo do (issue 20)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from sandbox.kommo.config import (
    SCHEDULE_FIELD_ID,
    SELLER_NAME_FIELD_ID,
    TEMPLATE_FORM_WELCOME_BOT,
    TEMPLATE_FORM_WELCOME_ID,
    TEMPLATE_IN_REVIEW_BOT,
    TEMPLATE_IN_REVIEW_ID,
    TEMPLATE_REOPEN_BOT,
    TEMPLATE_REOPEN_ID,
    TEMPLATE_SCHEDULING_BOT,
    TEMPLATE_SCHEDULING_ID,
    ConfigError,
    TemplateSeed,
    config_from_env,
)
from tests.sandbox.kommo_app import CONTACT, LEAD, Kommo, OpenKommo
from tests.sandbox.test_kommo_sandbox import chats_body, form, signed_chats_request

DAY = 86400.0
OTHER_LEAD = 9100002


async def chat_state(kommo: Kommo, lead_id: int = LEAD, **changes: Any) -> dict[str, Any]:
    path = f"/_sandbox/leads/{lead_id}/chat"
    answer = (
        await kommo.client.post(path, json=changes) if changes else await kommo.client.get(path)
    )
    assert answer.status_code == 200, answer.text
    state: dict[str, Any] = answer.json()
    return state


async def run_reply_bot(kommo: Kommo, headers: dict[str, str], lead_id: int = LEAD) -> None:
    run = [{"bot_id": kommo.config.salesbot_id, "entity_id": lead_id, "entity_type": 2}]
    answer = await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    assert answer.status_code == 202, answer.text


async def run_bot_v4(kommo: Kommo, headers: dict[str, str], bot_id: int, lead_id: int) -> None:
    run = {"bot_id": bot_id, "entity_id": lead_id, "entity_type": "leads"}
    answer = await kommo.client.post("/api/v4/bots/run", headers=headers, json=run)
    assert answer.status_code == 202, answer.text


async def write_lead_field(
    kommo: Kommo, headers: dict[str, str], lead_id: int, field_id: int, text: str
) -> None:
    answer = await kommo.client.patch(
        f"/api/v4/leads/{lead_id}",
        headers=headers,
        json={"custom_fields_values": [{"field_id": field_id, "values": [{"value": text}]}]},
    )
    assert answer.status_code == 200, answer.text


async def closed_window_sends(kommo: Kommo) -> list[dict[str, Any]]:
    sends: list[dict[str, Any]] = (await kommo.client.get("/_sandbox/closed-window-sends")).json()
    return sends


async def runs(kommo: Kommo) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await kommo.client.get("/_sandbox/salesbot-runs")).json()
    return found


async def new_lead(kommo: Kommo, name: str) -> int:
    answer = await kommo.client.post("/_sandbox/lead-event", json={"kind": "add", "name": name})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["lead_id"])


def outgoing_echoes(kommo: Kommo) -> list[dict[str, str]]:
    bodies = [form(request.content) for request in kommo.webhooks]
    return [b for b in bodies if b.get("message[add][0][type]") == "outgoing"]


# --- The window ---------------------------------------------------------------------------


async def test_a_seeded_chat_is_waba_with_a_window_open_for_the_session(kommo: Kommo) -> None:
    state = await chat_state(kommo)
    assert state["origin"] == "waba" and state["windowed"] is True
    assert state["window_open"] is True
    # The customer wrote an hour before the sandbox started; no message shows for it.
    assert time.time() - 3600 - 60 < state["customer_last_wrote_at"] < time.time() - 3600 + 1
    assert state["window_closes_at"] == state["customer_last_wrote_at"] + DAY
    assert await kommo.chat(LEAD) == []


async def test_free_text_into_a_closed_window_is_marked_failed_listed_and_still_echoed(
    kommo: Kommo,
) -> None:
    headers = await kommo.auth()
    wrote = time.time() - 25 * 3600
    state = await chat_state(kommo, customer_last_wrote_at=wrote)
    assert state["window_open"] is False and state["window_closes_at"] == wrote + DAY

    await kommo.set_reply(headers, "Sua resposta chegou tarde")
    await run_reply_bot(kommo, headers)
    await kommo.settled()

    [message] = await kommo.chat(LEAD)
    assert message["text"] == "Sua resposta chegou tarde" and message["via"] == "salesbot"
    assert message["delivered"] is False and message["failure"] == "outside_24h_window"
    [send] = await closed_window_sends(kommo)
    assert send["lead_id"] == LEAD and send["text"] == "Sua resposta chegou tarde"
    assert send["via"] == "salesbot" and send["origin"] == "waba"
    assert send["at"] == message["at"]
    [run] = await runs(kommo)
    assert run["outcome"] == "sent" and run["delivered"] is False
    assert run["failure"] == "outside_24h_window"
    # Kommo shows the failed message in the chat: the event and the echo go out as always.
    [echo] = outgoing_echoes(kommo)
    assert echo["message[add][0][id]"] == message["id"]
    assert echo["message[add][0][text]"] == "Sua resposta chegou tarde"
    events = [
        e
        for e in (await kommo.client.get("/_sandbox/events")).json()
        if e["type"] == "outgoing_chat_message"
    ]
    assert [e["value_after"][0]["message"]["id"] for e in events] == [message["id"]]
    assert (await kommo.client.get("/_sandbox/stats")).json()["closed_window_sends"] == 1


async def test_free_text_inside_the_window_is_delivered(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await chat_state(kommo, customer_last_wrote_at=time.time() - 23 * 3600)
    await kommo.set_reply(headers, "Ainda dentro da janela")
    await run_reply_bot(kommo, headers)
    await kommo.settled()
    [message] = await kommo.chat(LEAD)
    assert message["delivered"] is True and message["failure"] is None
    assert await closed_window_sends(kommo) == []
    assert (await runs(kommo))[0]["delivered"] is True


async def test_a_customer_message_reopens_the_window(kommo: Kommo) -> None:
    headers = await kommo.auth()
    assert (await chat_state(kommo, customer_last_wrote_at=None))["window_open"] is False
    before = time.time()
    written = await kommo.client.post(
        "/_sandbox/customer-message", json={"lead_id": LEAD, "text": "Oi, voltei"}
    )
    assert written.status_code == 200
    state = await chat_state(kommo)
    assert state["window_open"] is True and state["customer_last_wrote_at"] >= before
    await kommo.set_reply(headers, "Que bom!")
    await run_reply_bot(kommo, headers)
    await kommo.settled()
    assert [m["delivered"] for m in await kommo.chat(LEAD)] == [True, True]
    assert await closed_window_sends(kommo) == []


async def test_a_lead_added_in_kommo_has_a_customer_who_never_wrote(kommo: Kommo) -> None:
    headers = await kommo.auth()
    lead = await new_lead(kommo, "Renata Lobo")
    state = await chat_state(kommo, lead)
    assert state["origin"] == "waba" and state["customer_last_wrote_at"] is None
    assert state["window_open"] is False and state["window_closes_at"] is None
    await kommo.set_reply(headers, "Olá! Vi que você preencheu o formulário.", lead_id=lead)
    await run_reply_bot(kommo, headers, lead)
    await kommo.settled()
    [message] = await kommo.chat(lead)
    assert message["delivered"] is False
    assert [s["lead_id"] for s in await closed_window_sends(kommo)] == [lead]


async def test_the_window_is_checked_when_the_bot_runs_not_when_it_is_asked(
    open_kommo: OpenKommo,
) -> None:
    kommo = await open_kommo(echo_delay=0.3)
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Saiu depois da janela fechar")
    await run_reply_bot(kommo, headers)
    # The window closes between the run call (202) and the bot's run.
    await chat_state(kommo, customer_last_wrote_at=time.time() - DAY - 1)
    await kommo.settled()
    assert (await kommo.chat(LEAD))[0]["delivered"] is False
    assert len(await closed_window_sends(kommo)) == 1


async def test_a_chats_api_send_into_a_closed_window_is_failed(kommo: Kommo) -> None:
    await chat_state(kommo, customer_last_wrote_at=None)
    chat_id = kommo.sandbox.state.leads[LEAD].chat_id
    body = chats_body(chat_id, "Pelo canal próprio")
    answer = await kommo.client.post(
        f"/v2/origin/custom/{kommo.config.scope_id}",
        content=body,
        headers=signed_chats_request(kommo.config, body),
    )
    assert answer.status_code == 200, answer.text
    await kommo.settled()
    [message] = await kommo.chat(LEAD)
    assert message["via"] == "chats_api" and message["delivered"] is False
    [send] = await closed_window_sends(kommo)
    assert send["via"] == "chats_api" and send["text"] == "Pelo canal próprio"
    assert len(outgoing_echoes(kommo)) == 1


@pytest.mark.parametrize("origin", ["telegram", "com.amocrm.amocrmwa", "onlinechat"])
async def test_an_origin_without_a_window_always_delivers_and_webhooks_carry_it(
    kommo: Kommo, origin: str
) -> None:
    headers = await kommo.auth()
    state = await chat_state(kommo, origin=origin, customer_last_wrote_at=None)
    assert state["origin"] == origin and state["windowed"] is False
    assert state["window_open"] is True and state["window_closes_at"] is None

    await kommo.set_reply(headers, "Texto livre a qualquer hora")
    await run_reply_bot(kommo, headers)
    await kommo.settled()
    [message] = await kommo.chat(LEAD)
    assert message["delivered"] is True and await closed_window_sends(kommo) == []
    [echo] = outgoing_echoes(kommo)
    assert echo["message[add][0][origin]"] == origin

    incoming = await kommo.client.post(
        "/_sandbox/customer-message", json={"lead_id": LEAD, "text": "Oi"}
    )
    assert form(incoming.json()["body"])["message[add][0][origin]"] == origin
    events = (await kommo.client.get("/_sandbox/events")).json()
    mine = [
        e
        for e in events
        if e["value_after"][0]["message"]["id"] in (message["id"], incoming.json()["message_id"])
    ]
    assert {e["value_after"][0]["message"]["origin"] for e in mine} == {origin}


@pytest.mark.parametrize("origin", ["instagram", "instagram_business", "facebook"])
async def test_instagram_and_messenger_have_the_window_too(kommo: Kommo, origin: str) -> None:
    headers = await kommo.auth()
    await chat_state(kommo, origin=origin, customer_last_wrote_at=None)
    await kommo.set_reply(headers, "Fora da janela")
    await run_reply_bot(kommo, headers)
    await kommo.settled()
    [send] = await closed_window_sends(kommo)
    assert send["origin"] == origin
    assert outgoing_echoes(kommo)[0]["message[add][0][origin]"] == origin


async def test_the_windowed_origins_and_the_window_length_are_configuration(
    open_kommo: OpenKommo,
) -> None:
    kommo = await open_kommo(window_origins=("telegram",), window_seconds=60.0)
    headers = await kommo.auth()
    # waba is no longer windowed: a customer who never wrote still gets free text.
    await chat_state(kommo, customer_last_wrote_at=None)
    await chat_state(kommo, OTHER_LEAD, origin="telegram", customer_last_wrote_at=time.time() - 61)
    for lead in (LEAD, OTHER_LEAD):
        await kommo.set_reply(headers, "Oi", lead_id=lead)
        await run_reply_bot(kommo, headers, lead)
    await kommo.settled()
    assert [s["lead_id"] for s in await closed_window_sends(kommo)] == [OTHER_LEAD]


# --- Template Salesbots ------------------------------------------------------------------


async def test_a_template_run_delivers_to_a_closed_window_with_markers_filled_at_run_time(
    open_kommo: OpenKommo,
) -> None:
    kommo = await open_kommo(echo_delay=0.3)
    headers = await kommo.auth()
    lead = await new_lead(kommo, "Renata Lobo")
    await write_lead_field(kommo, headers, lead, SELLER_NAME_FIELD_ID, "Bruno")
    await run_bot_v4(kommo, headers, TEMPLATE_FORM_WELCOME_BOT, lead)
    # Written after the run call, before the bot runs: the bot reads this one.
    await write_lead_field(kommo, headers, lead, SELLER_NAME_FIELD_ID, "Camila Ferreira")
    await kommo.settled()

    [message] = await kommo.chat(lead)
    assert message["text"] == (
        "Olá Renata Lobo, aqui é Camila Ferreira. Recebemos seu formulário e vamos te ajudar!"
    )
    assert message["via"] == "template" and message["template_id"] == TEMPLATE_FORM_WELCOME_ID
    assert message["delivered"] is True and message["direction"] == "outgoing"
    assert await closed_window_sends(kommo) == []
    [run] = await runs(kommo)
    assert run["outcome"] == "sent" and run["template_id"] == TEMPLATE_FORM_WELCOME_ID
    [echo] = outgoing_echoes(kommo)
    assert echo["message[add][0][author][type]"] == "bot"
    assert echo["message[add][0][text]"] == message["text"]
    assert echo["message[add][0][id]"] == message["id"]
    # A template does not open the window: only the customer's answer does.
    assert (await chat_state(kommo, lead))["window_open"] is False
    stats = (await kommo.client.get("/_sandbox/stats")).json()
    assert stats["template_sends"] == 1 and stats["closed_window_sends"] == 0


async def test_the_reopen_and_scheduling_templates_fill_lead_name_and_fields(
    kommo: Kommo,
) -> None:
    headers = await kommo.auth()
    await chat_state(kommo, customer_last_wrote_at=time.time() - 3 * DAY)
    await write_lead_field(kommo, headers, LEAD, SCHEDULE_FIELD_ID, "12/03 às 10h")
    run = [
        {"bot_id": TEMPLATE_REOPEN_BOT, "entity_id": LEAD, "entity_type": 2},
        {"bot_id": TEMPLATE_SCHEDULING_BOT, "entity_id": LEAD, "entity_type": 2},
    ]
    answer = await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    assert answer.status_code == 202
    await kommo.settled()
    lead = kommo.sandbox.state.leads[LEAD]
    contact = kommo.sandbox.state.contacts[CONTACT]
    by_template = {m["template_id"]: m for m in await kommo.chat(LEAD)}
    assert by_template[TEMPLATE_REOPEN_ID]["text"] == (
        f"Olá {contact.name}! Temos uma resposta para você sobre {lead.name}. "
        "Responda esta mensagem para continuarmos."
    )
    assert by_template[TEMPLATE_SCHEDULING_ID]["text"] == (
        f"Olá {contact.name}! Seu agendamento: 12/03 às 10h."
    )
    assert await closed_window_sends(kommo) == []


async def test_unknown_and_empty_markers_are_left_empty(open_kommo: OpenKommo) -> None:
    template = TemplateSeed(
        901,
        "marcadores",
        "{{contact.name}}|{{lead.id}}|{{lead.cf.900011}}|{{contact.cf.700001}}|{{lead.foo}}|"
        "{{ lead.name }}",
        "approved",
        7901,
    )
    kommo = await open_kommo(templates=(template,))
    headers = await kommo.auth()
    await run_bot_v4(kommo, headers, 7901, LEAD)
    await kommo.settled()
    lead = kommo.sandbox.state.leads[LEAD]
    contact = kommo.sandbox.state.contacts[CONTACT]
    phone = contact.fields[700001][0].value
    assert (await kommo.chat(LEAD))[0]["text"] == (f"{contact.name}|{LEAD}||{phone}||{lead.name}")


async def test_a_template_not_approved_does_not_reach_the_chat(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await run_bot_v4(kommo, headers, TEMPLATE_IN_REVIEW_BOT, LEAD)
    paused = await kommo.client.post(
        f"/_sandbox/templates/{TEMPLATE_REOPEN_ID}/review", json={"review_status": "paused"}
    )
    assert paused.status_code == 200 and paused.json()["review_status"] == "paused"
    await run_bot_v4(kommo, headers, TEMPLATE_REOPEN_BOT, LEAD)
    await kommo.settled()
    assert [(r["outcome"], r["template_id"]) for r in await runs(kommo)] == [
        ("template_not_approved", TEMPLATE_IN_REVIEW_ID),
        ("template_not_approved", TEMPLATE_REOPEN_ID),
    ]
    assert await kommo.chat(LEAD) == [] and kommo.webhooks == []

    approved = await kommo.client.post(
        f"/_sandbox/templates/{TEMPLATE_IN_REVIEW_ID}/review", json={"review_status": "approved"}
    )
    assert approved.status_code == 200
    await run_bot_v4(kommo, headers, TEMPLATE_IN_REVIEW_BOT, LEAD)
    await kommo.settled()
    contact = kommo.sandbox.state.contacts[CONTACT]
    assert [m["text"] for m in await kommo.chat(LEAD)] == [f"Olá {contact.name}!"]


async def test_a_kommo_template_is_free_text_held_to_the_window(open_kommo: OpenKommo) -> None:
    """Kommo's own (``amocrm``) templates are canned text, not WhatsApp templates."""
    canned = TemplateSeed(902, "texto_pronto", "Oi {{contact.name}}", "draft", 7902, type="amocrm")
    kommo = await open_kommo(templates=(canned,))
    headers = await kommo.auth()
    listed = await kommo.client.get(
        "/api/v4/chats/templates", headers=headers, params={"with": "reviews"}
    )
    [shown] = listed.json()["_embedded"]["chat_templates"]
    assert shown["type"] == "amocrm" and "review_status" not in shown
    assert shown["is_editable"] is True and "waba_category" not in shown
    await chat_state(kommo, customer_last_wrote_at=None)
    await run_bot_v4(kommo, headers, 7902, LEAD)
    await kommo.settled()
    [message] = await kommo.chat(LEAD)
    assert message["via"] == "template" and message["delivered"] is False
    assert [s["via"] for s in await closed_window_sends(kommo)] == ["template"]


async def test_template_bots_are_known_bots_and_others_are_not(kommo: Kommo) -> None:
    headers = await kommo.auth()
    for bot_id in (TEMPLATE_REOPEN_BOT, TEMPLATE_IN_REVIEW_BOT):
        await run_bot_v4(kommo, headers, bot_id, LEAD)
    unknown = {"bot_id": 7199, "entity_id": LEAD, "entity_type": "leads"}
    refused = await kommo.client.post("/api/v4/bots/run", headers=headers, json=unknown)
    assert refused.status_code == 404
    stop = await kommo.client.post(
        f"/api/v4/bots/{TEMPLATE_REOPEN_BOT}/stop", headers=headers, json={"entity_id": LEAD}
    )
    assert stop.status_code == 202


async def test_the_template_fields_are_lead_custom_fields_of_the_account(kommo: Kommo) -> None:
    headers = await kommo.auth()
    answer = await kommo.client.get("/api/v4/leads/custom_fields", headers=headers)
    fields = {f["id"]: f for f in answer.json()["_embedded"]["custom_fields"]}
    assert fields[SELLER_NAME_FIELD_ID]["name"] == "Nome do vendedor"
    assert fields[SCHEDULE_FIELD_ID]["name"] == "Agendamento"
    assert fields[SCHEDULE_FIELD_ID]["type"] == "text"
    # Empty on every seeded lead: a lead without other values still renders null.
    lead = (await kommo.client.get("/api/v4/leads/9100005", headers=headers)).json()
    assert lead["custom_fields_values"] is None


# --- Templates API -----------------------------------------------------------------------


async def test_templates_api_lists_like_kommo(kommo: Kommo) -> None:
    path = "/api/v4/chats/templates"
    assert (await kommo.client.get(path)).status_code == 401
    headers = await kommo.auth()

    plain = await kommo.client.get(path, headers=headers)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("application/hal+json")
    templates = plain.json()["_embedded"]["chat_templates"]
    assert [t["id"] for t in templates] == [501, 502, 503, 504]
    assert [t["name"] for t in templates] == [
        "reabrir_conversa",
        "boas_vindas_formulario",
        "confirmacao_agendamento",
        "em_revisao",
    ]
    first = templates[0]
    assert first["type"] == "waba" and first["waba_category"] and first["waba_language"]
    assert first["content"].startswith("Olá {{contact.name}}! Temos uma resposta")
    assert first["_links"]["self"]["href"].endswith("/api/v4/chats/templates/501")
    assert "review_status" not in first

    reviewed = await kommo.client.get(path, headers=headers, params={"with": "reviews"})
    statuses = [t["review_status"] for t in reviewed.json()["_embedded"]["chat_templates"]]
    assert statuses == ["approved", "approved", "approved", "review"]

    page_one = await kommo.client.get(path, headers=headers, params={"limit": 3})
    assert len(page_one.json()["_embedded"]["chat_templates"]) == 3
    assert "page=2" in page_one.json()["_links"]["next"]["href"]
    page_two = await kommo.client.get(path, headers=headers, params={"limit": 3, "page": 2})
    assert [t["id"] for t in page_two.json()["_embedded"]["chat_templates"]] == [504]
    assert "next" not in page_two.json()["_links"]
    beyond = await kommo.client.get(path, headers=headers, params={"limit": 3, "page": 3})
    assert beyond.status_code == 204 and beyond.content == b""


async def test_templates_api_serves_at_most_50_a_page(kommo: Kommo) -> None:
    headers = await kommo.auth()
    for batch in range(2):
        drafts = [
            {"name": f"rascunho_{batch}_{n}", "content": "Oi {{contact.name}}"} for n in range(30)
        ]
        added = await kommo.client.post("/api/v4/chats/templates", headers=headers, json=drafts)
        assert added.status_code == 200, added.text
    for params in ({}, {"limit": 250}):
        page = await kommo.client.get("/api/v4/chats/templates", headers=headers, params=params)
        assert len(page.json()["_embedded"]["chat_templates"]) == 50
        assert "next" in page.json()["_links"]


async def test_templates_api_answers_204_when_there_are_none(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(templates=())
    answer = await kommo.client.get("/api/v4/chats/templates", headers=await kommo.auth())
    assert answer.status_code == 204 and answer.content == b""


async def test_new_templates_are_drafts_and_only_drafts_can_be_edited(kommo: Kommo) -> None:
    headers = await kommo.auth()
    path = "/api/v4/chats/templates"
    new = {
        "name": "lembrete_documentos",
        "content": "Olá {{contact.name}}, faltam seus documentos.",
        "type": "waba",
        "waba_category": "UTILITY",
        "waba_language": "pt_BR",
        "waba_examples": {"{{contact.name}}": "Maria"},
    }
    added = await kommo.client.post(path, headers=headers, json=[new])
    assert added.status_code == 200, added.text
    [created] = added.json()["_embedded"]["chat_templates"]
    assert created["review_status"] == "draft" and created["is_editable"] is True
    assert created["id"] > 504 and created["waba_examples"] == {"{{contact.name}}": "Maria"}

    edited = await kommo.client.patch(
        path, headers=headers, json=[{"id": created["id"], "content": "Olá! Faltam documentos."}]
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["_embedded"]["chat_templates"][0]["content"] == "Olá! Faltam documentos."

    refused = await kommo.client.patch(
        path,
        headers=headers,
        json=[
            {"id": created["id"], "content": "Não deveria mudar"},
            {"id": TEMPLATE_REOPEN_ID, "content": "Texto novo"},
            {"id": 999, "content": "?"},
        ],
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    errors = {e["request_id"]: e["errors"][0]["code"] for e in refused.json()["validation-errors"]}
    assert errors == {"1": "NotEditable", "2": "NotFound"}
    listed = (await kommo.client.get("/_sandbox/templates")).json()
    contents = {t["id"]: t["content"] for t in listed}
    assert contents[created["id"]] == "Olá! Faltam documentos.", "a refused list applies none"
    assert contents[TEMPLATE_REOPEN_ID].startswith("Olá {{contact.name}}! Temos")

    missing = await kommo.client.post(path, headers=headers, json=[{"name": "sem_texto"}])
    assert missing.status_code == 400


# --- Control endpoints -------------------------------------------------------------------


async def test_chat_control_sets_origin_and_last_message_and_refuses_nonsense(
    kommo: Kommo,
) -> None:
    wrote = time.time() - 600
    state = await chat_state(kommo, customer_last_wrote_at=wrote)
    assert state["customer_last_wrote_at"] == wrote and state["origin"] == "waba"
    state = await chat_state(kommo, origin="instagram")
    assert state["customer_last_wrote_at"] == wrote, "a field left out keeps its value"
    assert state["origin"] == "instagram" and state["window_closes_at"] == wrote + DAY
    assert (await chat_state(kommo))["origin"] == "instagram"

    path = f"/_sandbox/leads/{LEAD}/chat"
    assert (await kommo.client.post(path, json={"origin": ""})).status_code == 400
    assert (await kommo.client.post(path, json={"origen": "waba"})).status_code == 400
    assert (await kommo.client.get("/_sandbox/leads/1/chat")).status_code == 404
    snapshot = (await kommo.client.get(f"/_sandbox/leads/{LEAD}")).json()
    assert snapshot["chat_window"]["origin"] == "instagram"


async def test_review_control_refuses_unknown_templates_and_statuses(kommo: Kommo) -> None:
    unknown = await kommo.client.post(
        "/_sandbox/templates/999/review", json={"review_status": "approved"}
    )
    assert unknown.status_code == 404
    bad = await kommo.client.post(
        f"/_sandbox/templates/{TEMPLATE_REOPEN_ID}/review", json={"review_status": "ok"}
    )
    assert bad.status_code == 400
    for status in ("review", "approved", "paused", "rejected"):
        answer = await kommo.client.post(
            f"/_sandbox/templates/{TEMPLATE_REOPEN_ID}/review", json={"review_status": status}
        )
        assert answer.json()["review_status"] == status


async def test_reset_restores_chats_templates_and_the_closed_window_record(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await chat_state(kommo, origin="telegram", customer_last_wrote_at=None)
    await chat_state(kommo, OTHER_LEAD, customer_last_wrote_at=None)
    await kommo.set_reply(headers, "Fora", lead_id=OTHER_LEAD)
    await run_reply_bot(kommo, headers, OTHER_LEAD)
    await kommo.settled()
    await kommo.client.post(
        f"/_sandbox/templates/{TEMPLATE_REOPEN_ID}/review", json={"review_status": "rejected"}
    )
    assert len(await closed_window_sends(kommo)) == 1

    await kommo.client.post("/_sandbox/reset")
    assert (await chat_state(kommo))["origin"] == "waba"
    assert (await chat_state(kommo, OTHER_LEAD))["window_open"] is True
    assert await closed_window_sends(kommo) == []
    templates = {t["id"]: t for t in (await kommo.client.get("/_sandbox/templates")).json()}
    assert templates[TEMPLATE_REOPEN_ID]["review_status"] == "approved"
    assert templates[TEMPLATE_REOPEN_ID]["bot_id"] == TEMPLATE_REOPEN_BOT


# --- Configuration -----------------------------------------------------------------------


def test_window_and_templates_come_from_the_environment() -> None:
    default = config_from_env({})
    assert default.window_origins == (
        "waba",
        "instagram",
        "instagram_business",
        "facebook",
        "messenger",
    )
    assert default.window_seconds == DAY
    assert [t.id for t in default.templates] == [501, 502, 503, 504]
    assert [t.bot_id for t in default.templates] == [7101, 7102, 7103, 7104]

    templates = [{"id": 7, "name": "x", "content": "Oi", "review_status": "review", "bot_id": 8}]
    config = config_from_env(
        {
            "SANDBOX_WINDOW_ORIGINS": "waba, telegram",
            "SANDBOX_WINDOW_SECONDS": "60",
            "SANDBOX_TEMPLATES": json.dumps(templates),
        }
    )
    assert config.window_origins == ("waba", "telegram") and config.window_seconds == 60.0
    assert config.templates == (TemplateSeed(7, "x", "Oi", "review", 8),)
    assert config_from_env({"SANDBOX_WINDOW_ORIGINS": "none"}).window_origins == ()
    assert config_from_env({"SANDBOX_TEMPLATES": "[]"}).templates == ()


@pytest.mark.parametrize(
    "environ",
    [
        {"SANDBOX_TEMPLATES": "not json"},
        {"SANDBOX_TEMPLATES": '[{"id": 1, "name": "x", "content": "y", "review_status": "ok"}]'},
        {"SANDBOX_TEMPLATES": '[{"id": "1", "name": "x", "content": "y"}]'},
        {"SANDBOX_TEMPLATES": '[{"id": 1, "name": "x", "content": "y", "bot_id": 7001}]'},
        {
            "SANDBOX_TEMPLATES": '[{"id": 1, "name": "x", "content": "y", "bot_id": 5},'
            ' {"id": 1, "name": "z", "content": "y", "bot_id": 6}]'
        },
        {"SANDBOX_WINDOW_ORIGINS": ","},
        {"SANDBOX_WINDOW_SECONDS": "-1"},
    ],
)
def test_bad_window_or_template_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        config_from_env(environ)
