"""A reply from n8n that never arrives (lost on its way back while the bridge was
unreachable) does not leave the customer waiting: past BOT_REPLY_TIMEOUT the same
envelope goes to n8n again, and however many answers come back, the customer gets one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for


@pytest.fixture(scope="module")
def timeout_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "reply-timeout",
        env={"BOT_REPLY_TIMEOUT": "1", "BOT_HANDOFF_AFTER": "0"},
        sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"},
    ) as running:
        yield running


def standin(http: httpx.Client, stack: Stack, **config: Any) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json=config).raise_for_status()


def deliveries_of(http: httpx.Client, stack: Stack, text: str) -> list[str]:
    """The event ids of every envelope n8n received carrying this customer message."""
    received = http.get(f"{stack.standin_url}/_standin/received").json()["received"]
    return [
        r["body"]["event_id"]
        for r in received
        if any(m.get("text") == text for m in r["body"].get("messages") or [])
    ]


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    ]


def stats(http: httpx.Client, stack: Stack) -> dict[str, Any]:
    answer = http.get(f"{stack.edge_url}/stats", headers={"X-API-Key": stack.api_key})
    return dict(answer.json())


def test_an_unanswered_envelope_is_sent_again_until_n8n_answers(
    timeout_stack: Stack, http: httpx.Client
) -> None:
    stack, lead, text = timeout_stack, 9100005, "alguém vai me responder?"
    standin(http, stack, auto_reply=False)
    try:
        customer_writes(http, stack, lead, text)
        # n8n took it (200) but its answer never came: the same envelope goes again.
        wait_for(
            lambda: len(deliveries_of(http, stack, text)) >= 2,
            timeout=10,
            what="the envelope sent a second time",
        )
        ids = deliveries_of(http, stack, text)
        assert len(set(ids)) == 1, "a resend is the same event (the same event_id)"
    finally:
        standin(http, stack, auto_reply=True)
    wait_for(lambda: bot_replies(http, stack, lead), timeout=10, what="the reply")
    time.sleep(2.5)  # more than two reply timeouts: no resend once the reply came
    settled = len(deliveries_of(http, stack, text))
    time.sleep(2.0)
    assert len(deliveries_of(http, stack, text)) == settled
    assert len(bot_replies(http, stack, lead)) == 1
    assert stats(http, stack)["counters"].get("resent_to_n8n", 0) >= 1


def test_two_answers_to_one_envelope_reach_the_customer_once(
    timeout_stack: Stack, http: httpx.Client
) -> None:
    stack, lead, text = timeout_stack, 9100006, "quero saber do meu benefício"
    # n8n answers every delivery, but slower than the reply timeout: the envelope goes
    # twice and both answers come back with the same reply token.
    standin(http, stack, reply_delay=1.8)
    try:
        customer_writes(http, stack, lead, text)
        wait_for(lambda: len(deliveries_of(http, stack, text)) >= 2, timeout=10, what="a resend")
        wait_for(lambda: bot_replies(http, stack, lead), timeout=10, what="the reply")
        time.sleep(3.0)  # the later answers arrive and are recognised
    finally:
        standin(http, stack, reply_delay=0.0)
    assert len(bot_replies(http, stack, lead)) == 1
    replies = http.get(f"{stack.standin_url}/_standin/received").json()["replies"]
    assert any(r.get("body", {}).get("status") == "duplicate" for r in replies), replies
    # The conversation goes on: the next message is a new turn, answered once.
    customer_writes(http, stack, lead, "e o prazo?")
    wait_for(lambda: len(bot_replies(http, stack, lead)) == 2, timeout=10, what="next reply")
