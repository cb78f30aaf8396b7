"""DELETE /reset/conversations deletes a conversation the way an erase does (one
deletion, Privacy.erase_conversations): a conversation built by the real flow (a customer
writes, n8n answers, Kommo takes the reply and echoes it, a proactive start waits for
working hours, a person pauses the bot), then a reset of it — and a SCAN of the
conversation service's keys (`conv:*`), values included, finds nothing of it: not its
id, its lead's, its contact's, its chat's, a message, the pause's reason, nor its key
index, reply token and job, proactive job and claim, which the reset left behind before.

What stays, by design, holds no personal data: counters and aggregates (`conv:stats`,
`conv:series:*`, `conv:webhooks:*`), the dedupe markers (`conv:seen:*`: Kommo's message
ids), the event streams (emptied as events are applied) with their leases and replica
heartbeats, and `conv:bot-states:since`. The reset is the conversation service's: the
other services' copies (the gateway's cache of the lead and contact) are not its to
delete — DELETE /leads/{id}/data erases those."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack
from services.conversation.settings import ConversationSettings
from services.conversation.store.keys import event_streams
from tests.e2e.conftest import (
    chat,
    customer_writes,
    envelopes,
    isolated_stack,
    wait_for,
)
from tests.integration.test_retention import leftovers

EVENT_PARTITIONS = ConversationSettings.model_fields["event_partitions"].default

LEAD = 9100001
REASON = "Ana atende o Sr. Joaquim pessoalmente"
# The conversation service's keys that may stay after a reset: none holds personal data
# (the reports' day hashes and kept sums are counts, as the stats are).
KEPT = re.compile(
    r"conv:(stats|series:\d+|webhooks:(last|total)|bot-states:since"
    r"|events(:\{p\d+\})?(:owner)?|events:replicas"
    r"|report:\d{4}-\d{2}-\d{2}|report:sums:[\d:-]+:\w+:[-0-9a-f]+)$"
)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A Redis of its own: the scan must see only this test's data. Working hours that
    # start two hours from now: the proactive start waits, queued, for them.
    opens = (datetime.now(UTC).hour + 2) % 24
    with isolated_stack(
        tmp_path_factory,
        "reset",
        env={
            "PROACTIVE_HOURS": f"{opens:02d}:00-{opens:02d}:30",
            "PROACTIVE_DAYS": "mon-sun",
            "BRIDGE_TIMEZONE": "UTC",
        },
        sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"},
    ) as s:
        yield s


def _settled(client: redis.Redis, conversation_id: str, echoes: list[str]) -> bool:
    """The customer's message applied, the bot's echoes taken in (the ingest recognises
    the echo of the bridge's own send and keeps nothing of it but its dedupe marker), and
    no work left queued."""
    return (
        client.scard(f"conv:c:{conversation_id}:applied") >= 1
        and all(client.exists(f"conv:seen:{message_id}") for message_id in echoes)
        and not any(client.xlen(s) for s in event_streams(EVENT_PARTITIONS))
        and all(
            client.zcard(q) == 0 for q in ("conv:replies:due", "conv:notify:due", "conv:outbox:due")
        )
    )


def _conversation_keys(client: redis.Redis) -> dict[str, str]:
    return {k: v for k, v in leftovers(client, "conv:").items() if k.startswith("conv:")}


def test_a_reset_leaves_nothing_of_the_conversation_in_redis(own_stack: Stack) -> None:
    stack = own_stack
    client = redis.Redis.from_url(stack.redis_url)
    text = "Oi, meu CPF é 456 e quero revisar o benefício"
    with (
        httpx.Client(timeout=10) as http,
        httpx.Client(
            base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30
        ) as api,
    ):
        customer_writes(http, stack, LEAD, text)
        envelope: dict[str, Any] = wait_for(
            lambda: next(
                (
                    e
                    for e in envelopes(http, stack)
                    if any(m.get("text") == text for m in e["messages"])
                ),
                None,
            ),
            what="envelope at n8n",
        )
        conversation_id = envelope["conversation"]["id"]
        contact_id = envelope["contact"]["id"]
        chat_id = envelope["conversation"]["chat_id"]
        phone = envelope["contact"].get("phone") or ""
        replies = wait_for(
            lambda: [m for m in chat(http, stack, LEAD) if m["direction"] == "outgoing"],
            what="the bot's reply in the chat",
        )
        started = api.post("/start-proactive", json={"lead_id": LEAD, "trigger": "form"})
        assert started.status_code in (200, 201), started.text
        assert started.json()["conversation_id"] == conversation_id
        assert started.json()["status"] == "scheduled", started.json()
        wait_for(
            lambda: _settled(client, conversation_id, [m["id"] for m in replies]),
            timeout=20,
            what="work settled",
        )
        assert client.zcard("conv:proactive:due") == 1, "the start waits, queued"
        paused = api.post(
            "/bot-control",
            json={"action": "pause", "lead_id": LEAD, "by": "Ana", "reason": REASON},
        )
        assert paused.status_code == 200, paused.text

        needles = [
            str(LEAD),
            conversation_id,
            str(contact_id),
            chat_id,
            text,
            replies[0]["text"],
            REASON,
        ]
        needles += [phone, phone.lstrip("+")] if phone else []
        before = {k for k in _conversation_keys(client) if any(n in k for n in needles)}
        assert f"conv:c:{conversation_id}:keys" in before, "its key index, to be deleted"
        assert leftovers(client, *needles), "the flow stored the conversation's data"

        answer = api.delete("/reset/conversations", params={"conversation_id": conversation_id})
        assert answer.status_code == 200, answer.text
        assert answer.json()["deleted_conversations"] == 1

        left = {k: v for k, v in leftovers(client, *needles).items() if k.startswith("conv:")}
        assert left == {}, f"the reset left these behind: {sorted(left)}"
        assert [k for k in _conversation_keys(client) if not KEPT.match(k)] == []
        assert api.get("/conversations/active", params={"lead_id": LEAD}).json()["total"] == 0
        gone = api.delete("/reset/conversations", params={"conversation_id": conversation_id})
        assert gone.status_code == 404
