"""The reactive flow through real processes: a customer writes in Kommo (the sandbox),
n8n (the stand-in) gets the envelope with its context and answers, the customer gets
the reply in the chat and the lead gets a note."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import partial
from typing import Any
from urllib.parse import urlencode

import httpx
import redis

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, envelopes, lead_snapshot, wait_for

LEAD = 9100001


def _envelope_with(http: httpx.Client, stack: Stack, text: str) -> dict[str, Any] | None:
    for envelope in envelopes(http, stack):
        if any(m.get("text") == text for m in envelope.get("messages", [])):
            return envelope
    return None


def _bot_replies(http: httpx.Client, stack: Stack, lead_id: int, text: str) -> list[dict[str, Any]]:
    return [
        m for m in chat(http, stack, lead_id) if m["direction"] == "outgoing" and text in m["text"]
    ]


def test_customer_message_reaches_n8n_with_context_and_reply_reaches_customer(
    stack: Stack, http: httpx.Client
) -> None:
    text = "Oi, queria saber sobre aposentadoria por idade"
    sent = customer_writes(http, stack, LEAD, text)
    assert sent["bridge_status"] == 200

    envelope = wait_for(lambda: _envelope_with(http, stack, text), what="envelope at n8n")
    assert envelope["event"] == "message.received"
    assert envelope["conversation"]["lead_id"] == LEAD
    assert envelope["conversation"]["bot_state"] == "active"
    assert envelope["lead"]["id"] == LEAD
    assert envelope["lead"]["name"]
    assert envelope["contact"]["name"]
    # N8N_CONTACT_PHONE and N8N_CONTACT_EMAIL default to masked (LGPD): recognisable only.
    assert re.fullmatch(r"\+55 \d\d 9\*{4}-\*\*\d\d", envelope["contact"]["phone"])
    assert "***@" in envelope["contact"]["email"]
    assert "Resposta do bot" not in envelope["lead"]["custom_fields"]
    assert envelope["vendedor"] is not None, "the responsible vendedor is filled in"
    assert envelope["vendedor"]["id"] == envelope["lead"]["responsible_user_id"]
    assert envelope["callback"]["url"].endswith("/send-response")
    assert envelope["callback"]["reply_token"]

    replies = wait_for(lambda: _bot_replies(http, stack, LEAD, text), what="reply in chat")
    assert len(replies) == 1
    assert replies[0]["via"] == "salesbot"

    def noted() -> dict[str, Any] | None:
        snapshot = lead_snapshot(http, stack, LEAD)
        return snapshot if any(text in n["params"]["text"] for n in snapshot["notes"]) else None

    snapshot = wait_for(noted, what="note on the lead")
    assert any("Resposta do assistente" in n["params"]["text"] for n in snapshot["notes"])


def test_duplicate_webhook_is_acknowledged_and_processed_once(
    stack: Stack, http: httpx.Client
) -> None:
    lead = 9100002
    text = "mensagem entregue duas vezes pelo Kommo"
    sent = customer_writes(http, stack, lead, text)
    again = http.post(
        stack.webhook_url,
        content=sent["body"],
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1
    wait_for(lambda: _bot_replies(http, stack, lead, text), what="reply")
    # Give a second (wrong) processing every chance to show up.
    wait_for(lambda: len(chat(http, stack, lead)) >= 2, what="chat")
    import time

    time.sleep(1.0)
    assert sum(1 for e in envelopes(http, stack) for m in e["messages"] if m["text"] == text) == 1
    assert len(_bot_replies(http, stack, lead, text)) == 1


def test_wrong_secret_is_refused_and_nothing_is_stored(
    stack: Stack, http: httpx.Client, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    before = int(client.get("conv:webhooks:total") or 0)
    body = urlencode({"account[subdomain]": "previdas", "message[add][0][id]": "x-secret-test"})
    for url in (
        f"{stack.edge_url}/webhooks/kommo?secret=wrong",
        f"{stack.edge_url}/webhooks/kommo",
    ):
        answer = http.post(url, content=body)
        assert answer.status_code == 401
        assert "secret" in answer.json()["error"]
    assert int(client.get("conv:webhooks:total") or 0) == before
    assert not client.exists("conv:seen:x-secret-test")


def test_malformed_body_gets_400_with_the_reason(stack: Stack, http: httpx.Client) -> None:
    cases = {
        "message%5Badd%5D%5B0%5D%5Btext%5D=oi": "message[add][0][id] is missing",
        "just some text": "not a Kommo webhook",
        "message[add][0][id]=m1&message[add][0][chat_id]=c&message[add][0][created_at]=ontem": (
            "created_at] must be an integer"
        ),
        "&".join(f"f{i}=1" for i in range(1001)): "too many form fields",
    }
    for body, reason in cases.items():
        answer = http.post(stack.webhook_url, content=body)
        assert answer.status_code == 400, body
        assert reason in answer.json()["error"]


def test_body_over_one_mebibyte_gets_413(stack: Stack, http: httpx.Client) -> None:
    big = b"message[add][0][text]=" + b"a" * (1 << 20)
    assert http.post(stack.webhook_url, content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(17):
            yield b"a" * 65536

    assert http.post(stack.webhook_url, content=chunks()).status_code == 413
    assert (
        http.post(
            f"{stack.edge_url}/send-response",
            content=b"{" + b" " * (1 << 20) + b"}",
            headers={"X-API-Key": stack.api_key, "content-type": "application/json"},
        ).status_code
        == 413
    )


def test_messages_sent_while_n8n_is_down_are_delivered_when_it_returns(
    stack: Stack, http: httpx.Client
) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json={"down": True})
    texts = {9100003: "n8n fora do ar 1", 9100004: "n8n fora do ar 2"}
    try:
        for lead, text in texts.items():
            assert customer_writes(http, stack, lead, text)["bridge_status"] == 200
        wait_for(
            lambda: http.get(f"{stack.standin_url}/_standin/received").json()["refused"] >= 2,
            what="n8n refusing",
        )
        assert not any(_envelope_with(http, stack, t) for t in texts.values())
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"down": False})
    for lead, text in texts.items():
        wait_for(partial(_envelope_with, http, stack, text), timeout=15, what=text)
        wait_for(partial(_bot_replies, http, stack, lead, text), what="reply")


def test_expired_access_token_is_refreshed_and_old_refresh_token_is_refused(
    stack: Stack, http: httpx.Client, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    before = json.loads(client.get("gw:tokens") or "{}")
    stats_before = http.get(f"{stack.sandbox_url}/_sandbox/stats").json()
    http.post(f"{stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()

    lead, text = 9100005, "depois do token expirar"
    customer_writes(http, stack, lead, text)
    wait_for(lambda: _bot_replies(http, stack, lead, text), timeout=15, what="reply")

    after = json.loads(client.get("gw:tokens") or "{}")
    assert after["version"] > before["version"]
    assert after["refresh_token"] != before["refresh_token"]
    stats = http.get(f"{stack.sandbox_url}/_sandbox/stats").json()
    assert stats["token_refreshes"] == stats_before["token_refreshes"] + 1
    assert stats["refused_refresh_tokens"] == stats_before["refused_refresh_tokens"]

    def reuse_old_refresh_token() -> httpx.Response | None:
        answer = http.post(
            f"{stack.sandbox_url}/oauth2/access_token",
            json={
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "grant_type": "refresh_token",
                "refresh_token": before["refresh_token"],
                "redirect_uri": f"{stack.edge_url}/oauth/callback",
            },
        )
        return None if answer.status_code == 429 else answer  # the bridge shares the budget

    reuse = wait_for(reuse_old_refresh_token, what="an answer within the rate limit")
    assert reuse.status_code == 401
    assert reuse.json()["hint"] == "Token has been revoked"
