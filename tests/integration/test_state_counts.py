"""Conversations by bot state are counted as they change, not by reading every
conversation: the counts stay exact through creation, a turn at n8n, pause, resume,
handoff, a proactive start, erase, reset and the retention sweep. Against a real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, now_ms, text, text_map
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import Applied, ConversationStore
from services.conversation.store.keys import (
    BOT_STATES,
    BOT_STATES_SINCE,
    CONVERSATIONS,
    conversation_key,
    history_key,
    inbox_key,
)
from services.conversation.store.operations import Operations
from services.conversation.store.privacy import Privacy
from services.conversation.store.proactive import ProactiveStore

LEAD = 9100500


async def truth(redis: aioredis.Redis) -> dict[str, int]:
    """The counts read the slow way: every conversation's own hash."""
    counts = {"active": 0, "paused": 0, "awaiting_reply": 0}
    for member in cast(list[bytes], await redis.zrange(CONVERSATIONS, 0, -1)):
        data = text_map(await redis.hgetall(conversation_key(text(member))))
        if data:
            counts[data.get("bot_state", "active")] += 1
            counts["awaiting_reply"] += 1 if data.get("inflight_token") else 0
    return counts


async def customer_writes(
    store: ConversationStore, n: int, message: str = "m-1", at_ms: int = 0
) -> None:
    applied = await store.apply_message(
        conversation_id=f"conv-{n}",
        message_id=f"{message}-{n}",
        inbox_entry=json.dumps({"id": message, "text": "oi"}),
        history_entry=json.dumps({"role": "customer", "text": "oi"}),
        at_ms=at_ms or now_ms(),
        due_ms=now_ms(),
        lead_id=LEAD + n,
        contact_id=0,
        chat_id="",
        talk_id=0,
        to_inbox=True,
        history_max=10,
    )
    assert applied == Applied.APPLIED


async def turn_at_n8n(store: ConversationStore, n: int) -> None:
    # As a turn worker does once it has claimed the conversation (the lease only decides
    # whether the turn leaves the due queue).
    assert await store.commit_turn(
        conversation_id=f"conv-{n}",
        claim=Claim(f"conv-{n}", 0),
        consumed=1,
        reply_token=f"tok-{n}",
        event_id=f"ev-{n}",
        payload="{}",
        url="http://n8n",
        check_after_ms=60_000,
        turn_started_ms=now_ms(),
    )


async def expect(redis: aioredis.Redis, store: ConversationStore, **counts: int) -> None:
    wanted = {"active": 0, "paused": 0, "awaiting_reply": 0} | counts
    assert await store.state_counts() == wanted
    assert await truth(redis) == wanted


async def test_counts_stay_exact_through_create_turn_pause_resume_handoff_erase_and_reset(
    redis: aioredis.Redis,
) -> None:
    store, bots = ConversationStore(redis), BotStore(redis)
    await expect(redis, store)

    for n in (1, 2, 3):
        await customer_writes(store, n)
    await customer_writes(store, 1, message="m-2")  # a second message counts nothing new
    await expect(redis, store, active=3)

    await turn_at_n8n(store, 1)
    await expect(redis, store, active=3, awaiting_reply=1)

    assert await bots.set_state("conv-2", "paused", "Ana", "/assumir", 0) == "active"
    assert await bots.set_state("conv-2", "paused", "Ana", "/assumir", 0) == "paused"
    await expect(redis, store, active=2, paused=1, awaiting_reply=1)

    # A handoff: paused, and the turn at n8n settled without a reply.
    await bots.set_state("conv-1", "paused", "assistente", "o n8n não respondeu", 0)
    await expect(redis, store, active=1, paused=2, awaiting_reply=1)
    await store.clear_inflight("conv-1")
    await expect(redis, store, active=1, paused=2)

    assert await bots.set_state("conv-2", "active", "Ana", "/liberar", 0) == "paused"
    await expect(redis, store, active=2, paused=1)

    await turn_at_n8n(store, 3)
    await expect(redis, store, active=2, paused=1, awaiting_reply=1)
    await store.finish_turn("conv-3", "tok-3", "ev-3")
    await expect(redis, store, active=2, paused=1)

    proactive = ProactiveStore(redis)
    await proactive.ensure_conversation("conv-4", LEAD + 4, 0)
    await proactive.ensure_conversation("conv-4", LEAD + 4, 0)
    await expect(redis, store, active=3, paused=1)

    erasure = await Privacy(redis).erase(lead_id=LEAD + 1)
    assert erasure.counts["conversations"] == 1
    await expect(redis, store, active=3)
    assert await redis.zscore(BOT_STATES, "conv-1") is None, "no trace of an erased id"

    # Pausing a conversation erased meanwhile writes nothing, counts nothing.
    assert await bots.set_state("conv-1", "paused", "Ana", "/assumir", 0) is None
    await expect(redis, store, active=3)

    deleted, _ = await Operations(redis).reset(["conv-2"])
    assert deleted == 1
    await expect(redis, store, active=2)


async def test_a_conversation_past_retention_is_counted_until_the_sweep_erases_it(
    redis: aioredis.Redis,
) -> None:
    retention = 3600
    store = ConversationStore(redis, retention)
    await customer_writes(store, 1, at_ms=now_ms() - 2 * retention * 1000)
    await customer_writes(store, 2)
    assert await store.state_counts() == {"active": 2, "paused": 0, "awaiting_reply": 0}
    # Its keys expire by themselves; Redis cannot decrement a count when they do.
    await redis.delete(conversation_key("conv-1"), inbox_key("conv-1"), history_key("conv-1"))
    assert (await store.state_counts())["active"] == 2, "the bounded drift, until the sweep"

    await Privacy(redis, retention).sweep()

    assert await store.state_counts() == {"active": 1, "paused": 0, "awaiting_reply": 0}
    assert await redis.zrange(BOT_STATES, 0, -1) == [b"conv-2"]


async def test_conversations_from_before_the_counts_are_counted_once_on_first_read(
    redis: aioredis.Redis,
) -> None:
    store, bots = ConversationStore(redis), BotStore(redis)
    for n in range(1, 8):
        await customer_writes(store, n)
    await turn_at_n8n(store, 2)
    await bots.set_state("conv-3", "paused", "Ana", "/assumir", 0)
    await bots.set_state("conv-4", "paused", "Ana", "/assumir", 0)
    await turn_at_n8n(store, 4)
    # As an upgrade finds them: stored by a version that counted nothing, and a stale
    # member whose conversation is gone.
    await redis.delete(BOT_STATES, BOT_STATES_SINCE)
    await redis.zadd(BOT_STATES, {"conv-gone": 0})

    await expect(redis, store, active=5, paused=2, awaiting_reply=2)
    assert await redis.zscore(BOT_STATES, "conv-gone") is None
    assert await redis.exists(BOT_STATES_SINCE)


async def test_counts_stay_exact_when_many_changes_race(redis: aioredis.Redis) -> None:
    store, bots = ConversationStore(redis), BotStore(redis)
    for n in range(20):
        await customer_writes(store, n)

    async def toggle(n: int, times: int) -> None:
        for i in range(times):
            state = "paused" if (n + i) % 2 else "active"
            await bots.set_state(f"conv-{n}", state, "Ana", "corrida", 0)

    await asyncio.gather(*(toggle(n % 20, 7) for n in range(60)))
    await asyncio.gather(*(customer_writes(store, n, message="m-2") for n in range(20, 30)))

    counts = await store.state_counts()
    assert counts == await truth(redis)
    assert counts["active"] + counts["paused"] == 30
