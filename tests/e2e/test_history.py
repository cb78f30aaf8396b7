"""The conversation history n8n receives: every message once, in the order the customer
saw them — the bot's replies whether Kommo's echo of them arrives, arrives late, twice or
never; a person's takeover message too — and a conversation per lead, even when another
lead's webhook reuses its chat."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
import redis

from devstack.processes import free_port
from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for

FORM = {"content-type": "application/x-www-form-urlencoded"}
VENDEDOR_USER_ID = 10000002  # a salesperson of the sandbox's account


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Kommo (the sandbox) echoes every Salesbot send back to the bridge."""
    with isolated_stack(
        tmp_path_factory, "history", sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def unreachable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Kommo's webhooks reach nobody: the test carries each one to the bridge itself, so
    it decides which echoes are lost, late or delivered twice."""
    with isolated_stack(
        tmp_path_factory,
        "history-lost-echoes",
        sandbox_env={
            "SANDBOX_BRIDGE_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/nobody-listens",
            "SANDBOX_WEBHOOK_RETRIES": "0",
        },
    ) as running:
        yield running


def envelope_for(http: httpx.Client, stack: Stack, text: str) -> dict[str, Any]:
    """The envelope that carried the customer's `text` to n8n."""

    def find() -> dict[str, Any] | None:
        for envelope in envelopes(http, stack):
            if any(m.get("text") == text for m in envelope.get("messages") or []):
                return envelope
        return None

    return wait_for(find, what=f"the envelope of {text!r}")


def bot_reply_to(http: httpx.Client, stack: Stack, lead: int, text: str) -> dict[str, Any]:
    """The bot's answer to `text` as the customer got it in the chat (the stand-in quotes
    what it answers)."""

    def find() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in chat(http, stack, lead)
                if m["direction"] == "outgoing" and m["via"] == "salesbot" and text in m["text"]
            ),
            None,
        )

    return wait_for(find, what=f"the reply to {text!r} in the chat")


def wait_applied(stack: Stack, conversation_id: str, message_id: str) -> None:
    """Wait until the bridge has taken a webhook message in: applied (its store's record
    of it) or, for the echo of the bridge's own send, recognised as it was ingested (its
    dedupe marker; such an echo is never applied — anything of its conversation after it
    is applied after it anyway, in its partition's order)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        wait_for(
            lambda: (
                client.sismember(f"conv:c:{conversation_id}:applied", message_id)
                or client.exists(f"conv:seen:{message_id}")
            ),
            what=f"message {message_id} taken in",
        )
    finally:
        client.close()


def echo_body(http: httpx.Client, stack: Stack, message_id: str) -> str:
    """The outgoing-message webhook the sandbox sent (or tried to) for a chat message."""
    sent = http.get(f"{stack.sandbox_url}/_sandbox/webhooks-sent").json()
    return str(next(d["body"] for d in sent if f"={message_id}&" in d["body"] + "&"))


def post_webhook(http: httpx.Client, stack: Stack, body: str) -> dict[str, Any]:
    answer = http.post(stack.webhook_url, content=body, headers=FORM)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def roles_and_texts(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["role"], h["text"]) for h in envelope["history"]]


def bot_control(http: httpx.Client, stack: Stack, **body: Any) -> dict[str, Any]:
    answer = http.post(
        f"{stack.edge_url}/bot-control", json=body, headers={"X-API-Key": stack.api_key}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_history_has_each_message_once_in_the_order_the_customer_saw_them(
    stack: Stack, http: httpx.Client
) -> None:
    lead = 9100001
    expected: list[tuple[str, str]] = []
    conversation_id = ""
    for n in (1, 2, 3):
        text = f"pergunta {n} sobre a minha aposentadoria"
        customer_writes(http, stack, lead, text)
        envelope = envelope_for(http, stack, text)
        assert roles_and_texts(envelope) == expected, f"history of turn {n}"
        conversation_id = envelope["conversation"]["id"]
        reply = bot_reply_to(http, stack, lead, text)
        # Kommo's echo of the reply reaches the bridge before the customer writes again.
        wait_applied(stack, conversation_id, reply["id"])
        if n == 2:  # Kommo delivers that echo once more: still one entry
            assert post_webhook(http, stack, echo_body(http, stack, reply["id"]))["duplicates"]
        expected += [("customer", text), ("bot", reply["text"])]

    # A person of the team writes in the chat: the bot pauses, the message is history.
    takeover = "Oi, aqui é a Ana, vou continuar o seu atendimento."
    written = http.post(
        f"{stack.sandbox_url}/_sandbox/user-message",
        json={"lead_id": lead, "user_id": VENDEDOR_USER_ID, "text": takeover},
    ).json()
    wait_applied(stack, conversation_id, written["message_id"])
    assert bot_control(http, stack, action="status", lead_id=lead)["bot_state"] == "paused"
    bot_control(http, stack, action="resume", lead_id=lead, by="Ana", reason="teste")
    expected.append(("human", takeover))

    last = "obrigado, e agora?"
    customer_writes(http, stack, lead, last)
    envelope = envelope_for(http, stack, last)
    assert [m["text"] for m in envelope["messages"]] == [last]
    assert roles_and_texts(envelope) == expected
    assert len(expected) == 7


def test_a_bot_reply_is_history_once_when_its_echo_is_lost_late_or_repeated(
    unreachable_stack: Stack, http: httpx.Client
) -> None:
    stack, lead = unreachable_stack, 9100002
    first, second, third = "primeira mensagem", "segunda mensagem", "terceira mensagem"

    post_webhook(http, stack, customer_writes(http, stack, lead, first)["body"])
    envelope_for(http, stack, first)
    reply = bot_reply_to(http, stack, lead, first)  # its echo never reached the bridge

    post_webhook(http, stack, customer_writes(http, stack, lead, second)["body"])
    envelope = envelope_for(http, stack, second)
    assert roles_and_texts(envelope) == [("customer", first), ("bot", reply["text"])]
    second_reply = bot_reply_to(http, stack, lead, second)

    # The first echo shows up late, after the customer wrote again, and twice.
    late = echo_body(http, stack, reply["id"])
    post_webhook(http, stack, late)
    post_webhook(http, stack, late)
    wait_applied(stack, envelope["conversation"]["id"], reply["id"])

    post_webhook(http, stack, customer_writes(http, stack, lead, third)["body"])
    assert roles_and_texts(envelope_for(http, stack, third)) == [
        ("customer", first),
        ("bot", reply["text"]),
        ("customer", second),
        ("bot", second_reply["text"]),
    ]
    status = bot_control(http, stack, action="status", lead_id=lead)
    assert status["bot_state"] == "active", "the bridge's own echo never pauses the bot"


def test_a_webhook_reusing_another_leads_chat_gets_its_own_conversation(
    stack: Stack, http: httpx.Client
) -> None:
    lead_a, lead_b = 9100003, 9100004
    sent = customer_writes(http, stack, lead_a, "sou o cliente do lead A")
    first_a = envelope_for(http, stack, "sou o cliente do lead A")
    conversation_a = first_a["conversation"]["id"]
    reply_a = bot_reply_to(http, stack, lead_a, "sou o cliente do lead A")

    # Kommo opened a new lead in the same chat (same chat_id, another element_id).
    fields = dict(parse_qsl(sent["body"]))
    assert fields["message[add][0][chat_id]"] == sent["chat_id"]
    fields |= {
        "message[add][0][id]": str(uuid.uuid4()),
        "message[add][0][element_id]": str(lead_b),
        "message[add][0][entity_id]": str(lead_b),
        "message[add][0][text]": "agora pelo lead B",
    }
    post_webhook(http, stack, urlencode(fields))
    on_b = envelope_for(http, stack, "agora pelo lead B")
    assert on_b["conversation"]["lead_id"] == lead_b
    assert on_b["conversation"]["id"] != conversation_a
    assert on_b["conversation"]["chat_id"] == sent["chat_id"]
    assert on_b["history"] == [], "nothing of lead A's conversation"

    status_a = bot_control(http, stack, action="status", lead_id=lead_a)
    assert (status_a["conversation_id"], status_a["lead_id"]) == (conversation_a, lead_a)
    status_b = bot_control(http, stack, action="status", lead_id=lead_b)
    assert (status_b["conversation_id"], status_b["lead_id"]) == (
        on_b["conversation"]["id"],
        lead_b,
    )

    customer_writes(http, stack, lead_a, "de volta ao lead A")
    again_a = envelope_for(http, stack, "de volta ao lead A")
    assert again_a["conversation"]["id"] == conversation_a
    assert again_a["conversation"]["lead_id"] == lead_a
    assert roles_and_texts(again_a) == [
        ("customer", "sou o cliente do lead A"),
        ("bot", reply_a["text"]),
    ]


def test_a_message_written_while_n8n_answers_is_the_next_turn_once_the_reply_is_out(
    stack: Stack, http: httpx.Client
) -> None:
    lead, first, second = 9100006, "primeira pergunta", "e mais uma coisa"
    http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": False})
    try:
        customer_writes(http, stack, lead, first)
        at_n8n = envelope_for(http, stack, first)
        customer_writes(http, stack, lead, second)
        client = redis.Redis.from_url(stack.redis_url)
        try:  # the second turn found the first one at n8n and waits for its reply
            wait_for(
                lambda: client.hget(f"conv:c:{at_n8n['conversation']['id']}", "turn_waiting"),
                what="the second turn waiting",
            )
        finally:
            client.close()
        answer = http.post(
            f"{stack.edge_url}/send-response",
            json={"reply_token": at_n8n["callback"]["reply_token"], "text": "Resposta à primeira"},
            headers={"X-API-Key": stack.api_key},
        )
        assert answer.status_code == 200, answer.text
        envelope = envelope_for(http, stack, second)  # not after the handoff time (180 s)
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": True})
    assert [m["text"] for m in envelope["messages"]] == [second]
    assert roles_and_texts(envelope) == [("customer", first), ("bot", "Resposta à primeira")]
