"""Bot control end to end, with three conversation replicas: takeover by command and by
a person's message (never by the bridge's own echo), auto-resume, handoffs, bursts,
order, a replica killed with work in hand, dead letters and the operator endpoints."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, lead_snapshot, wait_for

DEBOUNCE = 0.8
QUIET = 3.0
# The sandbox's user 10000002, who writes in the chats below (user_writes).
PERSON = "Bruno Henrique Oliveira"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "bot",
        env={
            "MESSAGE_DEBOUNCE_SECONDS": str(DEBOUNCE),
            "BOT_AUTO_RESUME_AFTER": str(QUIET),
            "BOT_HANDOFF_AFTER": str(QUIET),
            "VISIBILITY_TIMEOUT_SECONDS": "2",
            "WORK_LEASE_SECONDS": "4",
        },
        scale={"conversation": 3},
    ) as running:
        yield running


def standin(http: httpx.Client, stack: Stack, **config: Any) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json=config).raise_for_status()


def received(http: httpx.Client, stack: Stack) -> list[dict[str, Any]]:
    body = http.get(f"{stack.standin_url}/_standin/received").json()
    return [r["body"] for r in body["received"]]


def texts_sent_to_n8n(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for e in received(http, stack)
        if e["conversation"]["lead_id"] == lead
        for m in e["messages"]
    ]


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    ]


def user_writes(http: httpx.Client, stack: Stack, lead: int, text: str) -> None:
    answer = http.post(
        f"{stack.sandbox_url}/_sandbox/user-message",
        json={"lead_id": lead, "user_id": 10000002, "text": text},
    )
    answer.raise_for_status()
    assert answer.json()["bridge_status"] == 200


def bot_state(api: httpx.Client, lead: int) -> str:
    """The lead's bot state; "" while it has no conversation yet (a new lead's first
    message is applied after its ack: the status may be asked before)."""
    answer = api.post("/bot-control", json={"action": "status", "lead_id": lead})
    if answer.status_code == 404:
        return ""
    return str(answer.json()["bot_state"])


def with_task(http: httpx.Client, stack: Stack, lead: int) -> dict[str, Any] | None:
    snapshot = lead_snapshot(http, stack, lead)
    return snapshot if snapshot["tasks"] else None


def converse(http: httpx.Client, stack: Stack, lead: int, text: str) -> None:
    """The customer writes and the bot answers (the conversation exists, bot active)."""
    before = len(bot_replies(http, stack, lead))
    customer_writes(http, stack, lead, text)
    wait_for(lambda: len(bot_replies(http, stack, lead)) > before, what=f"a reply to {text!r}")


def test_a_command_typed_in_the_chat_takes_over_and_never_reaches_n8n(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100001
    converse(http, stack, lead, "Olá, quero informações")
    assert bot_state(api, lead) == "active", "the bridge's own echo does not pause"
    user_writes(http, stack, lead, "/assumir")
    wait_for(lambda: bot_state(api, lead) == "paused", what="the pause")
    customer_writes(http, stack, lead, "ainda está aí?")
    time.sleep(DEBOUNCE + 1.0)
    assert "ainda está aí?" not in texts_sent_to_n8n(http, stack, lead)
    assert all("/assumir" not in t for t in texts_sent_to_n8n(http, stack, lead))
    status = api.post("/bot-control", json={"action": "status", "lead_id": lead}).json()
    assert status["history"][-1]["state"] == "paused"
    assert "/assumir" in status["paused_reason"]

    user_writes(http, stack, lead, f"/liberar {lead}")
    wait_for(lambda: bot_state(api, lead) == "active", what="the resume")
    converse(http, stack, lead, "voltei")
    notes = [n["params"]["text"] for n in lead_snapshot(http, stack, lead)["notes"]]
    assert any(n.startswith("⏸️") for n in notes) and any(n.startswith("▶️") for n in notes)
    envelope = next(e for e in received(http, stack) if e["messages"][0]["text"] == "voltei")
    assert all(h["role"] != "command" for h in envelope["history"])
    assert {"customer", "bot"} <= {h["role"] for h in envelope["history"]}


def test_commands_through_the_api(stack: Stack, http: httpx.Client, api: httpx.Client) -> None:
    lead = 9100002
    converse(http, stack, lead, "oi")
    taken = api.post("/vendedor/comandos", json={"command": f"/assumir {lead}", "vendedor_id": 7})
    assert taken.status_code == 200
    assert taken.json()["bot_state"] == "paused"
    assert taken.json()["paused_by"] == "vendedor 7"
    again = api.post("/vendedor/comandos", json={"command": f"/assumir {lead}"})
    assert again.json()["outcome"] == "unchanged"
    released = api.post("/vendedor/comandos", json={"command": f"/liberar {lead}"})
    assert released.json()["bot_state"] == "active"
    assert api.post("/vendedor/comandos", json={"command": "olá"}).status_code == 400
    assert api.post("/vendedor/comandos", json={"command": "/assumir abc"}).status_code == 400
    assert api.post("/vendedor/comandos", json={"command": "/assumir 9999999"}).status_code == 404
    assert api.post("/vendedor/comandos", json={"command": "/assumir"}).status_code == 400
    paused = api.post("/bot-control", json={"action": "pause", "lead_id": lead, "by": "Ana"})
    assert paused.json()["bot_state"] == "paused"
    assert api.post("/bot-control", json={"action": "resume", "lead_id": lead}).status_code == 200
    assert api.post("/bot-control", json={"action": "jump", "lead_id": lead}).status_code == 422


def test_a_person_writing_pauses_the_bot_which_resumes_after_the_quiet_period(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100003
    converse(http, stack, lead, "bom dia")
    user_writes(http, stack, lead, "Bom dia! Aqui é a Ana, vou te ajudar pessoalmente.")
    wait_for(lambda: bot_state(api, lead) == "paused", what="the automatic takeover")
    status = api.post("/bot-control", json={"action": "status", "lead_id": lead}).json()
    assert status["resumes_at"] is not None
    wait_for(lambda: bot_state(api, lead) == "active", timeout=QUIET + 5, what="the resume")
    converse(http, stack, lead, "obrigado")


def test_a_reply_after_a_takeover_is_refused(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100004
    converse(http, stack, lead, "primeira")
    standin(http, stack, auto_reply=False)
    try:
        customer_writes(http, stack, lead, "segunda")
        envelope = wait_for(
            lambda: next(
                (e for e in received(http, stack) if e["messages"][0]["text"] == "segunda"), None
            ),
            what="the envelope",
        )
        user_writes(http, stack, lead, "deixa comigo")
        wait_for(lambda: bot_state(api, lead) == "paused", what="the takeover")
        # Paused by the person who wrote, not by the silence handoff (BOT_HANDOFF_AFTER
        # would pause it too, QUIET seconds after the envelope, as "assistente").
        status = api.post("/bot-control", json={"action": "status", "lead_id": lead}).json()
        assert status["paused_by"] == PERSON, status
        assert status["paused_reason"] == "uma pessoa respondeu no chat"
        late = api.post(
            "/send-response",
            json={"reply_token": envelope["callback"]["reply_token"], "text": "tarde demais"},
        )
        assert late.status_code == 409
        assert "taken over" in late.json()["error"]
        assert PERSON in late.json()["error"]
    finally:
        standin(http, stack, auto_reply=True)
    assert "tarde demais" not in bot_replies(http, stack, lead)


def test_the_ai_asking_for_a_person_pauses_the_bot_and_leaves_a_task(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100005
    standin(http, stack, handoff=True)
    try:
        converse(http, stack, lead, "quero falar com um advogado")
    finally:
        standin(http, stack, handoff=False)
    wait_for(lambda: bot_state(api, lead) == "paused", what="the handoff")
    snapshot = wait_for(lambda: with_task(http, stack, lead), what="the task")
    assert "advogado" in snapshot["tasks"][0]["text"]
    assert snapshot["tasks"][0]["responsible_user_id"] == snapshot["lead"]["responsible_user_id"]


def test_n8n_staying_silent_hands_the_customer_to_the_vendedor(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100006
    standin(http, stack, auto_reply=False)
    try:
        customer_writes(http, stack, lead, "alguém me responde?")
        wait_for(lambda: bot_state(api, lead) == "paused", timeout=QUIET + 6, what="the handoff")
    finally:
        standin(http, stack, auto_reply=True)
    snapshot = wait_for(lambda: with_task(http, stack, lead), what="the task")
    assert "n8n não respondeu" in snapshot["tasks"][0]["text"]


def test_a_burst_of_three_messages_makes_one_call_in_order(
    stack: Stack, http: httpx.Client
) -> None:
    lead = 9100007
    for text in ("oi", "tudo bem?", "queria saber da revisão"):
        customer_writes(http, stack, lead, text)
    wait_for(lambda: bot_replies(http, stack, lead), what="the reply")
    envelopes = [e for e in received(http, stack) if e["conversation"]["lead_id"] == lead]
    assert len(envelopes) == 1
    assert [m["text"] for m in envelopes[0]["messages"]] == [
        "oi",
        "tudo bem?",
        "queria saber da revisão",
    ]


def test_a_burst_spread_over_most_of_the_debounce_is_one_turn(
    stack: Stack, http: httpx.Client
) -> None:
    """Each message moves the turn DEBOUNCE later: three messages half a debounce apart
    (a whole debounce from first to last) still make one envelope."""
    lead = 9100017
    texts = ["oi de novo", "tenho uma dúvida", "sobre o benefício"]
    for n, text in enumerate(texts):
        if n:
            time.sleep(DEBOUNCE / 2)
        customer_writes(http, stack, lead, text)
    wait_for(lambda: bot_replies(http, stack, lead), what="the reply")
    time.sleep(DEBOUNCE)  # a second turn, if there were one, would be at n8n by now
    envelopes = [e for e in received(http, stack) if e["conversation"]["lead_id"] == lead]
    assert [[m["text"] for m in e["messages"]] for e in envelopes] == [texts]


def test_order_holds_for_interleaved_conversations_across_replicas(
    stack: Stack, http: httpx.Client
) -> None:
    leads = list(range(9100021, 9100041))  # 20 conversations, 3 messages each
    with httpx.Client(base_url=stack.sandbox_url, timeout=15) as sandbox:
        sandbox.post(
            "/_sandbox/lead-event", json={"kind": "add", "name": "warm"}
        )  # the sandbox grows leads on demand
        for _ in range(len(leads)):
            sandbox.post("/_sandbox/lead-event", json={"kind": "add"})

    def write(lead: int, n: int) -> None:
        customer_writes(http, stack, lead, f"{lead}-{n}")

    for n in range(3):
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(write, leads, [n] * len(leads)))
    for lead in leads:
        wait_for(
            lambda le=lead: len(texts_sent_to_n8n(http, stack, le)) == 3,  # type: ignore[misc]
            timeout=20,
            what=f"all messages of {lead}",
        )
        assert texts_sent_to_n8n(http, stack, lead) == [f"{lead}-{n}" for n in range(3)]


def test_a_replica_killed_with_work_in_hand_loses_nothing_and_answers_once(
    stack: Stack, http: httpx.Client
) -> None:
    leads = list(range(9100008, 9100016))
    victim = stack.services["conversation"][0]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda lead: customer_writes(http, stack, lead, f"antes {lead}"), leads))
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(5)

    def kommo_delivers(lead: int) -> None:
        # Kommo retries a webhook that was not acknowledged: so do we.
        body = customer_writes(http, stack, lead, f"durante {lead}")
        while body["bridge_status"] != 200:
            time.sleep(0.5)
            body["bridge_status"] = httpx.post(stack.webhook_url, content=body["body"]).status_code

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kommo_delivers, leads))
    for lead in leads:
        wait_for(
            lambda le=lead: (
                {f"antes {le}", f"durante {le}"}  # type: ignore[misc]
                <= set(texts_sent_to_n8n(http, stack, le))
            ),
            timeout=30,
            what=f"the messages of {lead}",
        )
    time.sleep(2.0)
    for lead in leads:
        replies = bot_replies(http, stack, lead)
        assert len(replies) == len(set(replies)), f"a reply went twice to {lead}: {replies}"
        sent = texts_sent_to_n8n(http, stack, lead)
        assert len(sent) == len(set(sent)), f"a message reached n8n twice for {lead}"
    stack.restart_service(victim)


def test_a_dead_letter_is_listed_and_replayed(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100016
    standin(http, stack, status=410)
    try:
        customer_writes(http, stack, lead, "para a caixa de mortos")
        letter = wait_for(
            lambda: next(
                (
                    d
                    for d in api.get("/dead-letters").json()["dead_letters"]
                    if "410" in d["last_error"]
                ),
                None,
            ),
            what="the dead letter",
        )
    finally:
        standin(http, stack, status=200)
    assert letter["event"] == "message.received"
    assert letter["attempts"] == 1, "a 4xx is not retried"
    assert api.post(f"/dead-letters/{letter['event_id']}/replay").status_code == 200
    wait_for(lambda: bot_replies(http, stack, lead), what="the reply after the replay")
    assert api.post("/dead-letters/nope/replay").status_code == 404


def test_operator_endpoints(stack: Stack, http: httpx.Client, api: httpx.Client) -> None:
    # What it reads, it makes first: it passes alone as well as after the module's
    # other tests (it used to read their leads and counters).
    with httpx.Client(base_url=stack.sandbox_url, timeout=15) as sandbox:
        added = [sandbox.post("/_sandbox/lead-event", json={"kind": "add"}) for _ in range(6)]
    burst, by_command, by_person, by_ai, silent, dead = (a.json()["lead_id"] for a in added)
    for text in ("oi", "tudo bem?", "queria saber da revisão"):
        customer_writes(http, stack, burst, text)
    wait_for(lambda: bot_replies(http, stack, burst), what="the burst's reply")
    converse(http, stack, by_command, "olá")
    user_writes(http, stack, by_command, "/assumir")
    wait_for(lambda: bot_state(api, by_command) == "paused", what="the command's pause")
    converse(http, stack, by_person, "olá")
    user_writes(http, stack, by_person, "Aqui é o Bruno, sigo eu.")
    wait_for(lambda: bot_state(api, by_person) == "paused", what="the person's takeover")
    standin(http, stack, handoff=True)
    try:
        converse(http, stack, by_ai, "quero falar com um advogado")
    finally:
        standin(http, stack, handoff=False)
    wait_for(lambda: bot_state(api, by_ai) == "paused", what="the AI's handoff")
    standin(http, stack, auto_reply=False)
    try:
        customer_writes(http, stack, silent, "alguém me responde?")
        wait_for(lambda: bot_state(api, silent) == "paused", QUIET + 6, "the silence handoff")
    finally:
        standin(http, stack, auto_reply=True)
    standin(http, stack, status=410)
    try:
        customer_writes(http, stack, dead, "para a caixa de mortos")
        wait_for(
            lambda: any(
                "410" in d["last_error"] for d in api.get("/dead-letters").json()["dead_letters"]
            ),
            what="the dead letter",
        )
    finally:
        standin(http, stack, status=200)

    api.post("/bot-control", json={"action": "pause", "lead_id": burst, "pause_seconds": 600})
    paused = api.get("/conversations/active", params={"bot_state": "paused"}).json()
    assert paused["total"] >= 1
    assert all(c["bot_state"] == "paused" for c in paused["conversations"])
    page = api.get("/conversations/active", params={"page_size": 2}).json()
    assert len(page["conversations"]) == 2 and page["total"] > 2
    one = api.get("/conversations/active", params={"lead_id": burst}).json()
    assert [c["lead_id"] for c in one["conversations"]] == [burst]

    stats = api.get("/stats").json()
    assert stats["messages"]["in"] > 0 and stats["messages"]["out"] > 0
    assert stats["takeovers"]["by_command"] >= 1 and stats["takeovers"]["automatic"] >= 1
    assert stats["handoffs"]["asked_by_ai"] >= 1 and stats["handoffs"]["n8n_silent"] >= 1
    assert stats["n8n"]["dead_lettered"] >= 1
    assert stats["median_reply_seconds"] > 0
    assert stats["conversations"]["paused"] >= 1

    conversation_id = one["conversations"][0]["id"]
    debug = api.get("/debug/conversations", params={"conversation_id": conversation_id}).json()
    assert debug["conversation"]["lead_id"] == str(burst)
    assert [h["role"] for h in debug["history"]][:3] == ["customer"] * 3
    assert api.get("/debug/conversations").json()["conversations"]
    assert httpx.get(f"{stack.edge_url}/debug/conversations").status_code == 401

    reset = api.delete("/reset/conversations", params={"conversation_id": conversation_id})
    assert reset.json()["deleted_conversations"] == 1
    assert api.get("/conversations/active", params={"lead_id": burst}).json()["total"] == 0
    everything = api.delete("/reset/conversations").json()
    assert everything["deleted_conversations"] >= 5  # this test's other five, at least
    assert api.get("/conversations/active").json()["total"] == 0
