"""Bot rules end to end, with three conversation replicas, the Kommo sandbox and the n8n
stand-in as real processes: rules through the API (validated, versioned, applied by every
replica), keyword start and finish, the ignore list by phone, out of hours (reply once per
closed period, the held messages delivered at the opening), expiry, and replies split and
paced like typing — stopped by a takeover."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from sandbox.kommo.ids import FIRST_LEAD_ID
from sandbox.kommo.seed import mobile_phone
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for

REPLICAS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "rules",
        env={"BOT_RULES_REFRESH_SECONDS": "0.5"},
        scale={"conversation": REPLICAS},
        sandbox_env={"SANDBOX_LEADS": "120", "SANDBOX_ECHO_DELAY": "0.1"},
    ) as running:
        yield running


_next = iter(range(1, 121))


def fresh_lead() -> int:
    """A lead no other test of this module has used."""
    return FIRST_LEAD_ID + next(_next) - 1


def put_rules(api: httpx.Client, rules: dict[str, Any]) -> dict[str, Any]:
    current = api.get("/bot-rules")
    current.raise_for_status()
    answer = api.put("/bot-rules", json=rules, headers={"If-Match": current.headers["etag"]})
    assert answer.status_code == 200, answer.text
    written = dict(answer.json())
    # Every replica reads a change within BOT_RULES_REFRESH_SECONDS (0.5 s here).
    time.sleep(1.0)
    return written


def n8n_texts(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for e in envelopes(http, stack)
        if e.get("event") == "message.received" and e["conversation"]["lead_id"] == lead
        for m in e["messages"]
    ]


def bot_messages(http: httpx.Client, stack: Stack, lead: int) -> list[dict[str, Any]]:
    return [
        m
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    ]


def status(api: httpx.Client, lead: int) -> dict[str, Any]:
    answer = api.post("/bot-control", json={"action": "status", "lead_id": lead})
    answer.raise_for_status()
    return dict(answer.json())


def decided(api: httpx.Client, lead: int, action: str) -> dict[str, Any]:
    """The lead's last decision, once it is `action`."""

    def check() -> dict[str, Any] | None:
        decision = status(api, lead)["decision"]
        return decision if decision and decision["action"] == action else None

    return wait_for(check, 15, f"decision {action} on lead {lead}")


def test_rules_are_validated_versioned_and_shown(api: httpx.Client, stack: Stack) -> None:
    default = api.get("/bot-rules")
    assert default.status_code == 200
    assert default.json()["source"] == "default"
    catastrophic = api.put(
        "/bot-rules", json={"account": {"trigger": "regex", "pattern": "(a+)+$"}}
    )
    assert catastrophic.status_code == 400
    assert "account.pattern" in catastrophic.json()["error"]
    misspelt = api.put("/bot-rules", json={"acount": {}})
    assert misspelt.status_code == 400
    assert "acount" in misspelt.json()["error"]
    assert api.put("/bot-rules", content=b"not json").status_code == 400
    assert api.get("/bot-rules").json()["source"] == "default"  # nothing was written
    written = put_rules(api, {"account": {"trigger": "always"}})
    assert written["source"] == "api"
    assert written["version"] >= 1
    stale = api.put(
        "/bot-rules",
        json={"account": {"trigger": "always"}},
        headers={"If-Match": f'"{written["version"] - 1}"'},
    )
    assert stale.status_code == 409
    assert "version" in stale.json()["error"]
    schema = api.get("/openapi.json").json()
    body = schema["paths"]["/bot-rules"]["put"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/BotRules"}
    assert body["examples"]


def test_a_stage_override_changes_only_what_it_names_and_the_rules_in_force_show_it(
    api: httpx.Client,
) -> None:
    closed = {"enabled": True, "mode": "hold", "reply": "Abrimos às 8h."}
    put_rules(
        api,
        {
            "account": {"out_of_hours": closed},
            "stages": {"71000005": {"out_of_hours": {"reply": "Voltamos às 8h!"}}},
        },
    )
    # The document as written: the stage names only its text.
    written = api.get("/bot-rules").json()
    assert written["rules"]["stages"]["71000005"] == {"out_of_hours": {"reply": "Voltamos às 8h!"}}
    assert "in_force" not in written
    shown = api.get("/bot-rules", params={"pipeline_id": 8100002, "stage_id": 71000005})
    assert shown.status_code == 200, shown.text
    in_force = shown.json()["in_force"]
    assert in_force["scope"] == "stage 71000005"
    assert in_force["rules"]["out_of_hours"] == {
        "enabled": True,
        "mode": "hold",
        "reply": "Voltamos às 8h!",
    }
    assert in_force["fields_from"]["out_of_hours"] == "stage 71000005"
    assert in_force["fields_from"]["trigger"] == "account"
    elsewhere = api.get("/bot-rules", params={"stage_id": 71000009}).json()["in_force"]
    assert elsewhere["rules"]["out_of_hours"]["reply"] == "Abrimos às 8h."
    # `{}` puts the defaults back.
    put_rules(api, {})
    reset = api.get("/bot-rules", params={"stage_id": 71000005}).json()
    assert reset["rules"] == {}
    assert reset["in_force"]["rules"]["out_of_hours"]["enabled"] is False
    assert reset["in_force"]["rules"]["trigger"] == "always"


def test_keyword_start_only_for_sessions_that_open_with_it(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    put_rules(api, {"account": {"trigger": "keyword", "keywords": ["preço"]}})
    matched, other = fresh_lead(), fresh_lead()
    customer_writes(http, stack, matched, "Qual o preco da consulta?")
    customer_writes(http, stack, other, "oi, tudo bem?")
    wait_for(lambda: n8n_texts(http, stack, matched), 15, "the matching session at n8n")
    wait_for(lambda: bot_messages(http, stack, matched), 15, "the bot's reply")
    decision = decided(api, other, "not_triggered")
    assert "keyword" in decision["reason"]
    # The conversation's debug view says the same.
    debug = api.get(
        "/debug/conversations", params={"conversation_id": status(api, other)["conversation_id"]}
    ).json()["conversation"]
    assert (debug["decision"], debug["decision_reason"]) == ("not_triggered", decision["reason"])
    # The session did not open with the keyword: it stays with people.
    customer_writes(http, stack, other, "quero saber o preço")
    wait_for(lambda: status(api, other)["decision"]["at"] > decision["at"], 15, "a new turn")
    assert status(api, other)["decision"]["action"] == "not_triggered"
    assert n8n_texts(http, stack, other) == []
    assert bot_messages(http, stack, other) == []


def test_keyword_finish_hands_the_conversation_to_a_person(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    put_rules(api, {"account": {"keyword_finish": ["atendente"]}})
    lead = fresh_lead()
    customer_writes(http, stack, lead, "Quero falar com um ATENDENTE por favor")
    decision = decided(api, lead, "finish")
    assert "atendente" in decision["reason"]
    assert wait_for(lambda: status(api, lead)["bot_state"] == "paused", 15, "the handoff")
    snapshot = wait_for(
        lambda: (
            s
            if (s := http.get(f"{stack.sandbox_url}/_sandbox/leads/{lead}").json())["tasks"]
            else None
        ),
        15,
        "the handoff task",
    )
    assert any("atendimento humano" in n["params"]["text"] for n in snapshot["notes"])
    assert n8n_texts(http, stack, lead) == []


def test_ignore_list_by_phone_in_any_format(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    leads = [fresh_lead() for _ in range(3)]
    phones = [mobile_phone(lead - FIRST_LEAD_ID + 1) for lead in leads]  # "+55DD9XXXXXXXX"
    written = [
        phones[0],  # E.164
        phones[1].removeprefix("+"),  # digits with the country code
        f"({phones[2][3:5]}) {phones[2][5:10]}-{phones[2][10:]}",  # national, formatted
    ]
    put_rules(api, {"ignore": {"phones": written}})
    for lead in leads:
        customer_writes(http, stack, lead, "olá, bom dia")
    for lead, phone in zip(leads, phones, strict=True):
        decision = decided(api, lead, "ignore")
        assert decision["reason"].endswith(phone[-4:])
        assert phone not in decision["reason"]  # masked
    assert all(n8n_texts(http, stack, lead) == [] for lead in leads)
    assert api.get("/stats").json()["decisions"]["ignored"] >= 3


def test_rules_changed_through_the_api_apply_on_every_replica(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    written = put_rules(api, {"account": {"trigger": "keyword", "keywords": ["orçamento"]}})
    leads = [fresh_lead() for _ in range(24)]  # spread over every replica's partitions
    for lead in leads:
        customer_writes(http, stack, lead, "boa tarde")
    for lead in leads:
        decision = decided(api, lead, "not_triggered")
        assert decision["rules_version"] == written["version"]
    assert all(n8n_texts(http, stack, lead) == [] for lead in leads)
    logs = [p.log_path.read_text() for p in stack.services["conversation"]]
    assert all("bot rules: not_triggered" in log for log in logs), "a replica decided nothing"


def test_out_of_hours_reply_once_then_the_morning_delivery(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    now = datetime.now(UTC)
    if now.second > 50 or (now.hour == 23 and now.minute >= 58):
        time.sleep(70 - now.second)
        now = datetime.now(UTC)
    opening = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    reply = "Estamos fora do horário. Respondemos às {opening}.".format(opening="08h")
    put_rules(
        api,
        {
            "hours": {"timezone": "UTC", "hours": f"{opening:%H:%M}-23:59", "days": "mon-sun"},
            "account": {"out_of_hours": {"enabled": True, "reply": reply, "mode": "hold"}},
        },
    )
    lead = fresh_lead()
    customer_writes(http, stack, lead, "oi, alguém aí?")
    decided(api, lead, "hold")
    wait_for(lambda: bot_messages(http, stack, lead), 15, "the out-of-hours reply")
    customer_writes(http, stack, lead, "preciso de ajuda")
    wait_for(
        lambda: (
            status(api, lead)["decision"]["at"] > now.timestamp() + 0.001
            and len(chat(http, stack, lead)) >= 3
        ),
        15,
        "the second message",
    )
    time.sleep(1.0)
    assert [m["text"] for m in bot_messages(http, stack, lead)] == [reply]  # once per period
    assert n8n_texts(http, stack, lead) == []
    # At the opening hour both messages go to n8n by themselves, in one turn.
    texts = wait_for(
        lambda: n8n_texts(http, stack, lead), 90, "the held messages at the opening hour"
    )
    assert texts == ["oi, alguém aí?", "preciso de ajuda"]
    assert datetime.now(UTC) >= opening


def test_out_of_hours_forward_answers_and_sends_to_n8n(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    today = datetime.now(UTC).date()
    put_rules(
        api,
        {
            "hours": {"timezone": "UTC", "holidays": [today.isoformat()]},
            "account": {"out_of_hours": {"enabled": True, "reply": "Hoje é feriado!"}},
        },
    )
    lead = fresh_lead()
    customer_writes(http, stack, lead, "bom dia")
    wait_for(lambda: n8n_texts(http, stack, lead), 15, "the message at n8n at once")
    replies = wait_for(
        lambda: m if len(m := bot_messages(http, stack, lead)) >= 2 else None, 15, "replies"
    )
    assert replies[0]["text"] == "Hoje é feriado!"


def test_a_session_expires_and_its_history_restarts(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    put_rules(api, {"account": {"expire_minutes": 0.05}})  # 3 s
    lead = fresh_lead()
    customer_writes(http, stack, lead, "primeira conversa")
    wait_for(lambda: bot_messages(http, stack, lead), 15, "the first reply")
    time.sleep(4.0)
    customer_writes(http, stack, lead, "voltei")
    last = wait_for(
        lambda: [
            e
            for e in envelopes(http, stack)
            if e.get("event") == "message.received"
            and e["conversation"]["lead_id"] == lead
            and e["messages"][0]["text"] == "voltei"
        ],
        15,
        "the second turn",
    )[-1]
    assert [h["text"] for h in last["history"]] == []  # a fresh session
    assert status(api, lead)["decision"]["action"] == "answer"


def test_a_long_reply_arrives_split_in_order_and_paced(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    split = {
        "enabled": True,
        "max_chars": 60,
        "seconds_per_char": 0.01,
        "min_pause_seconds": 1.0,
        "max_pause_seconds": 1.5,
    }
    put_rules(api, {"account": {"split": split}})
    lead = fresh_lead()
    words = " ".join(f"palavra{n}" for n in range(30))  # ~270 characters
    customer_writes(http, stack, lead, words)
    parts = wait_for(
        lambda: (
            m if (m := bot_messages(http, stack, lead)) and "palavra29" in m[-1]["text"] else None
        ),
        30,
        "the reply's last part",
    )
    assert len(parts) >= 4
    assert all(len(p["text"]) <= 60 for p in parts)
    # In order, and no word cut: the parts' words are the reply's, ending with the
    # customer's words exactly as written.
    words_sent = " ".join(p["text"] for p in parts).split()
    assert words_sent[-30:] == words.split()
    assert words_sent[0] == "Olá,"
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(parts)]
    assert min(gaps) >= 0.9  # each after a pause that reads like typing


def test_n8n_may_send_a_list_and_a_takeover_stops_the_rest(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    pause = 3.0
    split = {"enabled": True, "min_pause_seconds": pause, "max_pause_seconds": pause}
    put_rules(api, {"account": {"split": split}})
    lead = fresh_lead()
    parts = ["Primeira.", "Segunda.", "Terceira.", "Quarta."]
    answer = api.post("/send-response", json={"lead_id": lead, "messages": parts})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "delivering"
    first = wait_for(lambda: bot_messages(http, stack, lead), 15, "the first part")[0]
    # A person writes in the chat: the bot is paused, the rest is not sent.
    user = http.post(
        f"{stack.sandbox_url}/_sandbox/user-message",
        json={
            "lead_id": lead,
            "user_id": 10000002,
            "text": "Oi, aqui é a Ana, vou continuar o atendimento.",
        },
    )
    user.raise_for_status()
    wait_for(lambda: status(api, lead)["bot_state"] == "paused", 15, "the takeover")
    # Past the moment the last part would have left without the takeover (the pauses
    # count from each part's delivery), with three seconds to spare for the sending.
    last_would_leave = first["at"] + pause * (len(parts) - 1)
    time.sleep(max(0.0, last_would_leave + 3.0 - time.time()))
    sent = [m["text"] for m in bot_messages(http, stack, lead)]
    assert sent[0] == "Primeira."
    assert len(sent) < len(parts), f"the takeover did not stop the reply: {sent}"
    assert sent == parts[: len(sent)]


def test_tags_and_stage_overrides_come_from_the_lead_in_kommo(
    api: httpx.Client, http: httpx.Client, stack: Stack
) -> None:
    def lead_in_kommo(lead: int) -> dict[str, Any]:
        return dict(http.get(f"{stack.sandbox_url}/_sandbox/leads/{lead}").json()["lead"])

    # Sandbox leads whose index is a multiple of 4 carry the tag "indicação".
    tagged = next(lead for lead in iter(fresh_lead, None) if (lead - FIRST_LEAD_ID + 1) % 4 == 0)
    tags = [t["name"] for t in lead_in_kommo(tagged)["_embedded"]["tags"]]
    assert "indicação" in tags
    plain = fresh_lead()
    stage = lead_in_kommo(plain)["status_id"]
    put_rules(
        api,
        {
            "account": {"trigger": "keyword", "keywords": ["orçamento"]},
            "stages": {str(stage): {"trigger": "always"}},
            "ignore": {"tags": ["INDICAÇÃO"]},
        },
    )
    customer_writes(http, stack, tagged, "orçamento, por favor")
    customer_writes(http, stack, plain, "oi")
    ignored = decided(api, tagged, "ignore")
    assert ignored["reason"] == "ignore list: tag 'indicação'"
    answered = decided(api, plain, "answer")
    assert answered["rule"] == f"stage {stage}"
    wait_for(lambda: n8n_texts(http, stack, plain) == ["oi"], 15, "the stage's override")
    assert n8n_texts(http, stack, tagged) == []
