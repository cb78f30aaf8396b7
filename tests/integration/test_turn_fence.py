"""One turn at n8n per conversation, fenced in the commit script itself: two turns of one
conversation built side by side (each having seen no turn in flight) never both commit —
the second finds the first's turn in flight and commits nothing. The turn stage's own
check (`inflight_since` read before building) cannot stop the second: it read the
conversation before the first committed."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from services.common.due_queue import now_ms
from services.conversation.store.conversations import ConversationStore
from services.conversation.store.keys import OUTBOX_DUE


def _message(message_id: str) -> dict[str, Any]:
    return {
        "conversation_id": "fenced",
        "message_id": message_id,
        "inbox_entry": json.dumps({"id": message_id, "seq": "1-0", "created_at": 1}),
        "history_entry": json.dumps({"role": "customer", "text": message_id}),
        "at_ms": now_ms(),
        "due_ms": now_ms(),
        "lead_id": 9,
        "contact_id": 8,
        "chat_id": "chat",
        "talk_id": 7,
        "to_inbox": True,
        "history_max": 10,
    }


async def test_a_second_turn_built_beside_the_first_never_commits(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis)
    await store.apply_message(**_message("m1"))
    [first] = await store.turns.claim(10, 5000)
    seen = await store.conversation("fenced")
    assert "inflight_token" not in seen  # both turns read this: nothing at n8n yet

    commit: dict[str, Any] = {
        "conversation_id": "fenced",
        "consumed": 1,
        "payload": "{}",
        "url": "http://n8n",
        "check_after_ms": 0,
        "turn_started_ms": now_ms(),
        "inflight_token": seen.get("inflight_token", ""),
    }
    assert await store.commit_turn(claim=first, reply_token="tok-1", event_id="ev-1", **commit)

    # The customer wrote again; a turn built from the same reading as the first (a
    # replica that read the conversation before the first commit) tries to commit.
    await store.apply_message(**_message("m2"))
    [second] = await store.turns.claim(10, 5000)
    assert not await store.commit_turn(claim=second, reply_token="tok-2", event_id="ev-2", **commit)

    after = await store.conversation("fenced")
    assert after["inflight_token"] == "tok-1", "the first turn is still the one at n8n"
    assert [m["id"] for m in await store.inbox("fenced")] == ["m2"], "m2 waits for its turn"
    assert await store.reply_token("tok-2") == {}, "no second reply token"
    assert await redis.zscore(OUTBOX_DUE, "ev-2") is None, "no second envelope"
