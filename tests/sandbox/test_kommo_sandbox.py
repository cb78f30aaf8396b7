"""The Kommo sandbox behaves like Kommo as docs/kommo-api.md describes it, unkind parts first."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import re
import urllib.parse
from typing import Any

import pytest

from sandbox.kommo import SandboxConfig
from sandbox.kommo.routes_chats import chats_signature
from sandbox.kommo.seed import seed
from tests.sandbox.kommo_app import (
    BASE_CONFIG,
    BRIDGE_URL,
    CONTACT,
    LEAD,
    REPLY_FIELD,
    Kommo,
    OpenKommo,
)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def form(body: str | bytes) -> dict[str, str]:
    text = body.decode() if isinstance(body, bytes) else body
    return {
        key: values[0]
        for key, values in urllib.parse.parse_qs(text, keep_blank_values=True).items()
    }


# --- OAuth ---------------------------------------------------------------------------------


async def test_code_exchange_then_each_refresh_rotates_and_the_old_refresh_token_is_refused(
    kommo: Kommo,
) -> None:
    first = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(code=kommo.config.auth_code)
    )
    assert first.status_code == 200
    pair = first.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 86400
    claims = jwt_claims(pair["access_token"])
    assert claims["account_id"] == kommo.config.account_id
    assert claims["exp"] - claims["iat"] == 86400 and claims["jti"]

    second = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(refresh_token=pair["refresh_token"])
    )
    assert second.status_code == 200
    assert second.json()["refresh_token"] != pair["refresh_token"]

    reused = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(refresh_token=pair["refresh_token"])
    )
    assert reused.status_code == 401
    assert reused.headers["content-type"] == "application/problem+json"
    refusal = reused.json()
    assert refusal["hint"] == "Token has been revoked"
    assert refusal["type"] == "https://developers.kommo.com/docs/oauth/OAuthProblemJson"
    assert refusal["title"] == "Unauthorized" and refusal["status"] == 401 and refusal["detail"]

    latest = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(refresh_token=second.json()["refresh_token"])
    )
    assert latest.status_code == 200
    stats = (await kommo.client.get("/_sandbox/stats")).json()
    assert stats["code_exchanges"] == 1
    assert stats["token_refreshes"] == 2
    assert stats["refused_refresh_tokens"] == 1


async def test_authorization_code_is_single_use(kommo: Kommo) -> None:
    grant = kommo.grant(code=kommo.config.auth_code)
    assert (await kommo.client.post("/oauth2/access_token", json=grant)).status_code == 200
    again = await kommo.client.post("/oauth2/access_token", json=grant)
    assert again.status_code == 400
    assert again.json()["hint"] == "Authorization code has been revoked"


async def test_wrong_client_secret_is_refused(kommo: Kommo) -> None:
    grant = {**kommo.grant(code=kommo.config.auth_code), "client_secret": "wrong"}
    answer = await kommo.client.post("/oauth2/access_token", json=grant)
    assert answer.status_code == 401
    assert answer.json()["hint"] == "Client authentication failed"


async def test_consent_page_redirects_with_a_fresh_one_time_code(kommo: Kommo) -> None:
    answer = await kommo.client.get(
        "/oauth", params={"client_id": kommo.config.client_id, "state": "xyz"}
    )
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(kommo.config.redirect_uri + "?")
    query = form(urllib.parse.urlsplit(location).query)
    assert query["state"] == "xyz" and query["referer"] == "previdas.kommo.com"
    exchange = await kommo.client.post("/oauth2/access_token", json=kommo.grant(code=query["code"]))
    assert exchange.status_code == 200


async def test_revoked_refresh_tokens_are_refused(kommo: Kommo) -> None:
    await kommo.client.post("/_sandbox/revoke-refresh-tokens")
    answer = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(refresh_token=kommo.config.initial_refresh_token)
    )
    assert answer.status_code == 401 and answer.json()["hint"] == "Token has been revoked"


async def test_expired_access_token_answers_401_problem_json(kommo: Kommo) -> None:
    headers = await kommo.auth()
    assert (await kommo.client.get("/api/v4/account", headers=headers)).status_code == 200
    await kommo.client.post("/_sandbox/expire-tokens")
    expired = await kommo.client.get("/api/v4/account", headers=headers)
    assert expired.status_code == 401
    assert expired.headers["content-type"] == "application/problem+json"
    assert expired.json()["status"] == 401


async def test_access_token_dies_when_its_ttl_runs_out(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(access_token_ttl=0)
    answer = await kommo.client.get("/api/v4/account", headers=await kommo.auth())
    assert answer.status_code == 401


async def test_api_call_without_a_token_is_unauthorized(kommo: Kommo) -> None:
    answer = await kommo.client.get(f"/api/v4/leads/{LEAD}")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"


# --- HAL entities ------------------------------------------------------------------------


async def test_users_pagination_links_next_and_answers_204_past_the_end(kommo: Kommo) -> None:
    headers = await kommo.auth()
    first = await kommo.client.get("/api/v4/users", params={"limit": 4}, headers=headers)
    assert first.headers["content-type"] == "application/hal+json"
    body = first.json()
    assert body["_page"] == 1 and len(body["_embedded"]["users"]) == 4
    assert "page=2" in body["_links"]["next"]["href"]
    last = (
        await kommo.client.get("/api/v4/users", params={"limit": 4, "page": 3}, headers=headers)
    ).json()
    assert [user["id"] for user in last["_embedded"]["users"]] == [10000009]
    assert "next" not in last["_links"]
    past = await kommo.client.get("/api/v4/users", params={"limit": 4, "page": 4}, headers=headers)
    assert past.status_code == 204 and past.content == b""


async def test_unknown_lead_answers_204_without_body(kommo: Kommo) -> None:
    answer = await kommo.client.get("/api/v4/leads/9999999", headers=await kommo.auth())
    assert answer.status_code == 204 and answer.content == b""


async def test_lead_with_contacts_and_its_contact_phone(kommo: Kommo) -> None:
    headers = await kommo.auth()
    lead = (await kommo.client.get(f"/api/v4/leads/{LEAD}?with=contacts", headers=headers)).json()
    assert lead["_embedded"]["contacts"] == [
        {"id": CONTACT, "is_main": True, "_links": lead["_embedded"]["contacts"][0]["_links"]}
    ]
    assert lead["responsible_user_id"] == 10000002
    area = {f["field_id"]: f for f in lead["custom_fields_values"]}[900002]
    assert area["values"][0]["value"] == "previdenciario"
    contact = (await kommo.client.get(f"/api/v4/contacts/{CONTACT}", headers=headers)).json()
    phone = next(f for f in contact["custom_fields_values"] if f["field_code"] == "PHONE")
    assert re.fullmatch(r"\+55\d{2}9\d{8}", phone["values"][0]["value"])
    assert phone["values"][0]["enum_code"] == "MOB"


async def test_account_lists_task_types(kommo: Kommo) -> None:
    account = (
        await kommo.client.get("/api/v4/account?with=task_types", headers=await kommo.auth())
    ).json()
    assert account["id"] == 30000001 and account["subdomain"] == "previdas"
    names = {t["id"]: t["name"] for t in account["_embedded"]["task_types"]}
    assert names[1] == "Follow-up" and names[2] == "Meeting"


async def test_seed_is_deterministic_and_brazilian() -> None:
    first, second = seed(BASE_CONFIG), seed(BASE_CONFIG)
    assert list(first.leads) == list(range(9100001, 9100021)) == list(second.leads)
    assert [c.fields for c in first.contacts.values()] == [
        c.fields for c in second.contacts.values()
    ]
    assert [u.id for u in first.users.values() if u.is_admin] == [10000001]
    assert [u.id for u in first.users.values() if not u.is_active] == [10000009]
    assert first.leads[9100020].responsible_user_id == 10000009
    assert first.leads[9100005].fields == {}
    assert all(u.email.endswith("@previdas.com.br") for u in first.users.values())


async def test_unknown_custom_field_is_a_validation_error(kommo: Kommo) -> None:
    answer = await kommo.client.patch(
        f"/api/v4/leads/{LEAD}",
        headers=await kommo.auth(),
        json={"custom_fields_values": [{"field_id": 123, "values": [{"value": "x"}]}]},
    )
    assert answer.status_code == 400
    assert (
        answer.json()["validation-errors"][0]["errors"][0]["path"]
        == "custom_fields_values.0.field_id"
    )


async def test_batch_lead_patch_and_notes_and_tasks(kommo: Kommo) -> None:
    headers = await kommo.auth()
    batch = await kommo.client.patch(
        "/api/v4/leads",
        headers=headers,
        json=[
            {
                "id": 9100002,
                "custom_fields_values": [{"field_id": 900002, "values": [{"value": "bpc-loas"}]}],
            }
        ],
    )
    assert batch.status_code == 200 and batch.json()["_embedded"]["leads"][0]["id"] == 9100002
    notes = await kommo.client.post(
        f"/api/v4/leads/{LEAD}/notes",
        headers=headers,
        json=[{"note_type": "common", "params": {"text": "Resumo da conversa"}}],
    )
    note = notes.json()["_embedded"]["notes"][0]
    assert note["entity_id"] == LEAD and note["request_id"] == "0"
    listed = (await kommo.client.get(f"/api/v4/leads/{LEAD}/notes", headers=headers)).json()
    assert listed["_embedded"]["notes"][0]["params"] == {"text": "Resumo da conversa"}
    tasks = await kommo.client.post(
        "/api/v4/tasks",
        headers=headers,
        json=[
            {
                "text": "Ligar para o cliente",
                "complete_till": 1800000000,
                "entity_id": LEAD,
                "entity_type": "leads",
                "responsible_user_id": 10000003,
                "task_type_id": 1,
            }
        ],
    )
    assert tasks.json()["_embedded"]["tasks"][0]["id"]
    listed_tasks = (await kommo.client.get("/api/v4/tasks", headers=headers)).json()
    assert listed_tasks["_embedded"]["tasks"][0]["responsible_user_id"] == 10000003


# --- Rate limit, blocks, faults --------------------------------------------------------------


async def test_rate_limit_answers_429_plain_text_without_retry_after(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(rate_limit_rps=3)
    headers = await kommo.auth()
    answers = [await kommo.client.get("/api/v4/account", headers=headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429, 429]
    refused = answers[-1]
    assert refused.headers["content-type"].startswith("text/plain")
    assert "retry-after" not in refused.headers
    with pytest.raises(ValueError):
        json.loads(refused.text)
    stats = (await kommo.client.get("/_sandbox/stats")).json()
    assert stats["rate_limited_429"] == 3 and stats["max_requests_in_any_second"] == 6


async def test_repeated_429s_block_everything_with_an_nginx_page(open_kommo: OpenKommo) -> None:
    kommo = await open_kommo(rate_limit_rps=1, block_after_429s=2)
    headers = await kommo.auth()
    statuses = [
        (await kommo.client.get("/api/v4/account", headers=headers)).status_code for _ in range(3)
    ]
    assert statuses == [429, 429, 403]
    token = await kommo.client.post(
        "/oauth2/access_token", json=kommo.grant(code=kommo.config.auth_code)
    )
    assert token.status_code == 403
    assert token.headers["content-type"].startswith("text/html") and "nginx" in token.text
    await kommo.client.post("/_sandbox/faults", json={"blocked": False, "rate_limit_rps": 0})
    assert (await kommo.client.get("/api/v4/account", headers=headers)).status_code == 200


async def test_down_answers_503_on_every_call(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.client.post("/_sandbox/faults", json={"down": True})
    assert (await kommo.client.get("/api/v4/account", headers=headers)).status_code == 503


async def test_injected_5xx_after_effect_still_sends_the_message(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Olá! Recebemos seus documentos.")
    await kommo.client.post(
        "/_sandbox/faults",
        json={
            "fail_next": [
                {"path_prefix": "/api/v2/salesbot/run", "status": 502, "apply_effect": True}
            ]
        },
    )
    run = [{"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": 2}]
    answer = await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    assert answer.status_code == 502

    await kommo.settled()
    assert [m["text"] for m in await kommo.chat(LEAD)] == ["Olá! Recebemos seus documentos."]
    assert (
        await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    ).status_code == 202


async def test_injected_5xx_without_effect_sends_nothing(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Oi")
    await kommo.client.post(
        "/_sandbox/faults", json={"fail_next": [{"path_prefix": "/api/v4/bots/run", "status": 504}]}
    )
    run = {"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"}
    assert (
        await kommo.client.post("/api/v4/bots/run", headers=headers, json=run)
    ).status_code == 504
    await asyncio.sleep(kommo.config.echo_delay * 3)
    assert await kommo.chat(LEAD) == []
    assert (await kommo.client.get("/_sandbox/stats")).json()["salesbot_runs"] == 0


# --- Salesbot ----------------------------------------------------------------------------


async def test_salesbot_sends_the_field_value_it_reads_when_it_runs(
    open_kommo: OpenKommo,
) -> None:
    # The second reply must be written before the run reads the field: a delay far above
    # what one request takes on a loaded machine (30 ms was not, in CI).
    kommo = await open_kommo(echo_delay=1.0)
    headers = await kommo.auth()
    events_query = {
        "filter[entity]": "lead",
        "filter[entity_id]": str(LEAD),
        "filter[type]": "outgoing_chat_message",
    }
    none_yet = await kommo.client.get("/api/v4/events", params=events_query, headers=headers)
    assert none_yet.status_code == 204

    await kommo.set_reply(headers, "Primeira resposta")
    run = [{"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": 2}]
    answer = await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    assert answer.status_code == 202
    # A second reply written before the bot reads the field replaces the first.
    await kommo.set_reply(headers, "Segunda resposta")
    assert await kommo.chat(LEAD) == []

    await kommo.settled()
    assert len(await kommo.chat(LEAD)) == 1
    message = (await kommo.chat(LEAD))[0]
    assert message["text"] == "Segunda resposta"
    assert message["direction"] == "outgoing" and message["via"] == "salesbot"

    echo = form(kommo.webhooks[-1].content)
    assert echo["message[add][0][type]"] == "outgoing"
    assert echo["message[add][0][author][type]"] == "bot"
    assert echo["message[add][0][text]"] == "Segunda resposta"
    assert echo["message[add][0][id]"] == message["id"]

    events = (await kommo.client.get("/api/v4/events", params=events_query, headers=headers)).json()
    event = events["_embedded"]["events"][0]
    assert event["type"] == "outgoing_chat_message" and event["entity_id"] == LEAD
    # Kommo's shape: the message's id, channel and talk, written by no user — and no text.
    assert event["created_by"] == 0
    assert event["value_after"] == [
        {"message": {"id": message["id"], "origin": "waba", "talk_id": 5201}}
    ]


async def test_v4_bot_run_answers_accepted_as_html(kommo: Kommo) -> None:
    headers = await kommo.auth()
    run = {"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"}
    answer = await kommo.client.post("/api/v4/bots/run", headers=headers, json=run)
    assert answer.status_code == 202
    assert answer.headers["content-type"].startswith("text/html") and answer.text == "Accepted"
    unknown = await kommo.client.post(
        "/api/v4/bots/run", headers=headers, json={**run, "bot_id": 1}
    )
    assert unknown.status_code == 404


async def test_v4_bot_run_takes_a_list_and_a_stop_cancels_pending_runs(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Não deveria sair")
    run = {"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": "leads"}
    answer = await kommo.client.post("/api/v4/bots/run", headers=headers, json=[run, run])
    assert answer.status_code == 202
    stop = await kommo.client.post(
        f"/api/v4/bots/{kommo.config.salesbot_id}/stop",
        headers=headers,
        json={"entity_id": LEAD, "entity_type": "leads"},
    )
    assert stop.status_code == 202
    await kommo.settled()
    runs = (await kommo.client.get("/_sandbox/salesbot-runs")).json()
    assert [r["outcome"] for r in runs] == ["stopped", "stopped"]
    assert await kommo.chat(LEAD) == []


async def test_salesbot_with_an_empty_field_sends_nothing_and_records_it(kommo: Kommo) -> None:
    headers = await kommo.auth()
    run = [{"bot_id": kommo.config.salesbot_id, "entity_id": LEAD, "entity_type": 2}]
    assert (
        await kommo.client.post("/api/v2/salesbot/run", headers=headers, json=run)
    ).status_code == 202

    await kommo.settled()
    assert (await kommo.client.get("/_sandbox/salesbot-runs")).json()[0]["outcome"] == "empty_field"
    assert await kommo.chat(LEAD) == [] and kommo.webhooks == []


# --- Chats API ---------------------------------------------------------------------------


def signed_chats_request(
    config: SandboxConfig, body: bytes, *, secret: str | None = None
) -> dict[str, str]:
    content_md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - the protocol's checksum
    date = email.utils.formatdate(usegmt=True)
    path = f"/v2/origin/custom/{config.scope_id}"
    signature = chats_signature(
        secret or config.channel_secret, "POST", content_md5, "application/json", date, path
    )
    return {
        "Date": date,
        "Content-Type": "application/json",
        "Content-MD5": content_md5,
        "X-Signature": signature,
    }


def chats_body(conversation_id: str, text: str) -> bytes:
    event = {
        "event_type": "new_message",
        "payload": {
            "timestamp": 1764000000,
            "msgid": "bridge-msg-1",
            "conversation_id": conversation_id,
            "sender": {"id": "bridge-bot", "name": "Assistente Previdas"},
            "message": {"type": "text", "text": text},
        },
    }
    return json.dumps(event).encode()


async def test_chats_api_accepts_a_correct_signature_and_echoes_the_message(kommo: Kommo) -> None:
    chat_id = kommo.sandbox.state.leads[LEAD].chat_id
    body = chats_body(chat_id, "Podemos agendar amanhã às 10h?")
    answer = await kommo.client.post(
        f"/v2/origin/custom/{kommo.config.scope_id}",
        content=body,
        headers=signed_chats_request(kommo.config, body),
    )
    assert answer.status_code == 200, answer.text
    new_message = answer.json()["new_message"]
    assert new_message["ref_id"] == "bridge-msg-1" and new_message["conversation_id"] == chat_id

    await kommo.settled()
    assert len(kommo.webhooks) == 1
    echo = form(kommo.webhooks[0].content)
    assert echo["message[add][0][id]"] == new_message["msgid"]
    assert echo["message[add][0][type]"] == "outgoing"
    assert (await kommo.chat(LEAD))[0]["via"] == "chats_api"


async def test_chats_api_refuses_a_bad_signature(kommo: Kommo) -> None:
    body = chats_body(str(LEAD), "Oi")
    wrong_key = signed_chats_request(kommo.config, body, secret="not-the-channel-secret")
    refused = await kommo.client.post(
        f"/v2/origin/custom/{kommo.config.scope_id}", content=body, headers=wrong_key
    )
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    upper_md5 = signed_chats_request(kommo.config, body)
    upper_md5["Content-MD5"] = upper_md5["Content-MD5"].upper()
    refused_md5 = await kommo.client.post(
        f"/v2/origin/custom/{kommo.config.scope_id}", content=body, headers=upper_md5
    )
    assert refused_md5.status_code == 403


# --- Acting as people --------------------------------------------------------------------


async def test_customer_message_posts_kommo_form_body_with_bracketed_keys(kommo: Kommo) -> None:
    answer = await kommo.client.post(
        "/_sandbox/customer-message",
        json={"lead_id": LEAD, "text": "Oi, queria saber sobre aposentadoria"},
    )
    result = answer.json()
    assert result["bridge_status"] == 200
    posted = kommo.webhooks[0]
    assert str(posted.url) == BRIDGE_URL
    assert posted.headers["content-type"] == "application/x-www-form-urlencoded"
    assert posted.content.decode() == result["body"]
    fields = form(result["body"])
    prefix = "message[add][0]"
    expected_keys = {
        "account[subdomain]",
        "account[id]",
        "account[_links][self]",
        *(
            f"{prefix}[{key}]"
            for key in (
                "id", "chat_id", "talk_id", "contact_id", "text", "created_at", "element_type",
                "element_id", "entity_type", "entity_id", "type", "author][id", "author][type",
                "author][name", "author][avatar_url", "origin", "message_type",
            )
        ),
    }  # fmt: skip
    assert set(fields) == expected_keys
    assert fields["account[subdomain]"] == "previdas" and fields["account[id]"] == "30000001"
    assert fields[f"{prefix}[id]"] == result["message_id"]
    assert fields[f"{prefix}[element_type]"] == "2" and fields[f"{prefix}[element_id]"] == str(LEAD)
    assert fields[f"{prefix}[entity_id]"] == str(LEAD) and fields[f"{prefix}[contact_id]"] == str(
        CONTACT
    )
    assert (
        fields[f"{prefix}[type]"] == "incoming" and fields[f"{prefix}[author][type]"] == "external"
    )
    assert fields[f"{prefix}[text]"] == "Oi, queria saber sobre aposentadoria"
    assert fields[f"{prefix}[origin]"] == "waba" and fields[f"{prefix}[message_type]"] == "text"


async def test_customer_media_message_carries_the_attachment(kommo: Kommo) -> None:
    attachment = {"type": "picture", "link": "https://files.test/rg.jpg", "file_name": "rg.jpg"}
    answer = await kommo.client.post(
        "/_sandbox/customer-message",
        json={"lead_id": LEAD, "text": "", "message_type": "picture", "attachment": attachment},
    )
    fields = form(answer.json()["body"])
    assert fields["message[add][0][message_type]"] == "picture"
    assert fields["message[add][0][attachment][link]"] == "https://files.test/rg.jpg"
    assert fields["message[add][0][attachment][file_name]"] == "rg.jpg"


async def test_user_message_is_outgoing_with_the_user_as_author(kommo: Kommo) -> None:
    answer = await kommo.client.post(
        "/_sandbox/user-message",
        json={"lead_id": LEAD, "user_id": 10000003, "text": "Deixa comigo"},
    )
    fields = form(answer.json()["body"])
    assert fields["message[add][0][type]"] == "outgoing"
    assert fields["message[add][0][author][type]"] == "user"
    assert fields["message[add][0][author][id]"] == "10000003"
    assert fields["message[add][0][author][name]"] == "Camila Ferreira Santos"


async def test_webhook_failure_is_recorded_not_raised(kommo: Kommo) -> None:
    kommo.bridge_status = 500
    answer = await kommo.client.post(
        "/_sandbox/customer-message", json={"lead_id": LEAD, "text": "Oi"}
    )
    assert answer.status_code == 200 and answer.json()["bridge_status"] == 500
    stats = (await kommo.client.get("/_sandbox/stats")).json()
    assert stats["webhooks_sent"] == 1 and stats["webhook_failures"] == 1


async def test_lead_status_event_posts_old_and_new_status(kommo: Kommo) -> None:
    answer = await kommo.client.post(
        "/_sandbox/lead-event", json={"kind": "status", "lead_id": LEAD, "status_id": 71000003}
    )
    fields = form(answer.json()["body"])
    assert fields["leads[status][0][id]"] == str(LEAD)
    assert fields["leads[status][0][status_id]"] == "71000003"
    assert fields["leads[status][0][old_status_id]"] == "71000002"


async def test_deactivated_user_shows_in_the_api(kommo: Kommo) -> None:
    await kommo.client.patch("/_sandbox/users/10000004", json={"is_active": False})
    user = (await kommo.client.get("/api/v4/users/10000004", headers=await kommo.auth())).json()
    assert user["rights"]["is_active"] is False


async def test_reset_returns_to_the_seed_and_keeps_issued_tokens(kommo: Kommo) -> None:
    headers = await kommo.auth()
    await kommo.set_reply(headers, "Texto antigo")
    await kommo.client.post("/_sandbox/reset")
    lead = (await kommo.client.get(f"/api/v4/leads/{LEAD}", headers=headers)).json()
    assert REPLY_FIELD not in {f["field_id"] for f in lead["custom_fields_values"]}
    assert (await kommo.client.get("/_sandbox/requests")).json()[0][
        "path"
    ] == f"/api/v4/leads/{LEAD}"
    await kommo.token_pair()
