"""The conversation service's Redis scripts against a real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, now_ms, text
from services.conversation import envelope
from services.conversation.store.conversations import (
    ECHO_COUNTER,
    Applied,
    ConversationStore,
    EchoCheck,
    Incoming,
    Ingested,
    TurnOffer,
)
from services.conversation.store.keys import (
    SEEN_TTL_SECONDS,
    STATS,
    TURNS_DUE,
    WEBHOOKS_TOTAL,
    WORK_FAILING,
    WORKERS_GROUP,
    event_streams,
    seen_key,
)


async def test_ingest_stores_new_events_once_and_counts_webhooks(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis)
    first = await store.ingest(
        2,
        [
            Incoming(seen_key("a"), "{}", "lead:1"),
            Incoming(seen_key("b"), "{}", "lead:2"),
            Incoming(seen_key("a"), "{}", "lead:1"),
        ],
    )
    assert first == [Ingested.STORED, Ingested.STORED, Ingested.DUPLICATE]
    again = await store.ingest(1, [Incoming(seen_key("b"), "{}", "lead:2")])
    assert again == [Ingested.DUPLICATE]
    assert sum([await redis.xlen(s) for s in event_streams(store.event_partitions)]) == 2
    assert int(await redis.get(WEBHOOKS_TOTAL) or 0) == 3
    ttl = await redis.ttl(seen_key("a"))
    assert SEEN_TTL_SECONDS - 5 < ttl <= SEEN_TTL_SECONDS


async def test_a_claimed_item_is_due_again_when_its_lease_ends(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, "test:due")
    await queue.schedule("job", now_ms())
    [claim] = await queue.claim(10, lease_ms=200)
    assert await queue.claim(10, lease_ms=200) == []  # leased: nobody else gets it
    await asyncio.sleep(0.25)
    [again] = await queue.claim(10, lease_ms=200)  # the holder died: a live replica takes it
    assert again.member == "job"
    assert not await queue.release(claim)  # the old holder cannot drop the new lease
    assert await queue.release(again)
    assert await redis.zcard("test:due") == 0


async def test_a_newer_schedule_survives_the_release_of_an_older_lease(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, "test:due")
    await queue.schedule("conv", now_ms())
    [claim] = await queue.claim(10, lease_ms=5000)
    await queue.schedule("conv", now_ms() + 3000)  # a message arrived meanwhile
    assert not await queue.release(claim)
    assert await redis.zscore("test:due", "conv") is not None


async def test_claim_member_takes_only_a_due_item(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, "test:due")
    await queue.schedule("later", now_ms() + 60_000)
    assert await queue.claim_member("later", 1000) is None
    await queue.schedule("now", now_ms())
    assert await queue.claim_member("now", 1000) is not None
    assert await queue.claim_member("now", 1000) is None


async def test_a_message_is_applied_once_even_when_delivered_twice(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    args: dict[str, Any] = {
        "conversation_id": "c1",
        "message_id": "m1",
        "inbox_entry": json.dumps({"id": "m1", "seq": "1-0", "created_at": 1}),
        "history_entry": json.dumps({"role": "customer", "text": "oi"}),
        "at_ms": now_ms(),
        "due_ms": now_ms(),
        "lead_id": 9,
        "contact_id": 8,
        "chat_id": "chat",
        "talk_id": 7,
        "to_inbox": True,
        "history_max": 10,
    }
    assert await store.apply_message(**args) == Applied.APPLIED
    assert await store.apply_message(**args) == Applied.DUPLICATE
    assert len(await store.inbox("c1")) == 1
    assert await store.conversation_by_lead(9) == "c1"
    conversation = await store.conversation("c1")
    assert conversation["bot_state"] == "active"
    assert conversation["chat_id"] == "chat"


async def test_committing_a_turn_consumes_exactly_the_messages_it_read(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    for i in range(2):
        await store.apply_message(
            conversation_id="c1",
            message_id=f"m{i}",
            inbox_entry=json.dumps({"id": f"m{i}", "seq": f"{i}-0"}),
            history_entry="{}",
            at_ms=now_ms(),
            due_ms=now_ms(),
            lead_id=9,
            contact_id=0,
            chat_id="chat",
            talk_id=0,
            to_inbox=True,
            history_max=10,
        )
    [claim] = await store.turns.claim(10, 5000)
    read = await store.inbox("c1")
    await store.apply_message(  # arrives while the turn is being built
        conversation_id="c1",
        message_id="m9",
        inbox_entry=json.dumps({"id": "m9", "seq": "9-0"}),
        history_entry="{}",
        at_ms=now_ms(),
        due_ms=now_ms() + 1000,
        lead_id=9,
        contact_id=0,
        chat_id="chat",
        talk_id=0,
        to_inbox=True,
        history_max=10,
    )
    assert await store.commit_turn(
        conversation_id="c1",
        claim=claim,
        consumed=len(read),
        reply_token="tok",
        event_id="ev",
        payload="{}",
        url="http://n8n",
        check_after_ms=60_000,
        turn_started_ms=now_ms(),
    )
    assert [m["id"] for m in await store.inbox("c1")] == ["m9"]
    assert (await store.reply_token("tok"))["conversation_id"] == "c1"
    assert (await store.conversation("c1"))["inflight_token"] == "tok"
    assert await redis.zscore("conv:turns:due", "c1") is not None  # m9's turn is kept
    assert await redis.zscore("conv:handoffs:due", "c1") is not None  # n8n's silence watched
    await store.finish_turn("c1", "tok")
    assert "inflight_token" not in await store.conversation("c1")
    assert await redis.zscore("conv:handoffs:due", "c1") is None


def _message(
    conversation_id: str, message_id: str, lead_id: int, **overrides: Any
) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "message_id": message_id,
        "inbox_entry": json.dumps({"id": message_id, "seq": "1-0", "created_at": 1}),
        "history_entry": json.dumps({"role": "customer", "text": message_id}),
        "at_ms": now_ms(),
        "due_ms": now_ms(),
        "lead_id": lead_id,
        "contact_id": 8,
        "chat_id": "chat",
        "talk_id": 7,
        "to_inbox": True,
        "history_max": 10,
        **overrides,
    }


async def test_a_message_of_another_lead_never_joins_a_conversation_nor_changes_its_lead(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    assert await store.apply_message(**_message("conv-a", "m1", 9)) == Applied.APPLIED
    assert await store.apply_message(**_message("conv-a", "m2", 10)) == Applied.OTHER_LEAD
    assert (await store.conversation("conv-a"))["lead_id"] == "9"
    assert [h["text"] for h in await store.history("conv-a", 10)] == ["m1"]
    assert await store.conversation_by_lead(9) == "conv-a"
    assert await store.conversation_by_lead(10) is None

    # Lead 10 gets a conversation of its own in the same chat; the chat keeps its first.
    assert await store.apply_message(**_message("conv-b", "m2", 10)) == Applied.SHARED_CHAT
    assert await store.apply_message(**_message("conv-b", "m3", 10)) == Applied.APPLIED
    assert await store.conversation_by_lead(10) == "conv-b"
    assert await store.conversation_by_chat("chat") == "conv-a"
    assert (await store.conversation("conv-b"))["chat_id"] == "chat"


async def test_a_chat_seen_without_a_lead_is_taken_by_the_lead_that_shows_up(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    assert await store.apply_message(**_message("conv-c", "m1", 0)) == Applied.APPLIED
    assert "lead_id" not in await store.conversation("conv-c")
    assert await store.apply_message(**_message("conv-c", "m2", 9)) == Applied.APPLIED
    assert (await store.conversation("conv-c"))["lead_id"] == "9"


async def test_an_empty_history_entry_applies_the_message_without_recording_it(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    echo = _message("c1", "echo-1", 9, history_entry="", to_inbox=False)
    assert await store.apply_message(**echo) == Applied.APPLIED
    assert await store.apply_message(**echo) == Applied.DUPLICATE
    assert await store.history("c1", 10) == []
    assert await store.inbox("c1") == []


async def test_a_delivered_reply_is_marked_and_recorded_together(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9, history_entry=""))  # its conversation
    await store.begin_reply("key", "job", {"conversation_id": "c1", "text": "oi"}, 60_000)
    await store.reply_delivered("job", "c1", {"role": "bot", "text": "oi"}, cap=10)
    assert (await store.reply_job("job"))["delivered"] == "1"
    assert await store.history("c1", 10) == [{"role": "bot", "text": "oi"}]


async def _turn_at_n8n(store: ConversationStore) -> None:
    await store.apply_message(**_message("c1", "m1", 9))
    [claim] = await store.turns.claim(10, 5000)
    assert await store.commit_turn(
        conversation_id="c1",
        claim=claim,
        consumed=1,
        reply_token="tok",
        event_id="ev",
        payload="{}",
        url="http://n8n",
        check_after_ms=0,
        turn_started_ms=now_ms(),
    )
    await store.apply_message(**_message("c1", "m2", 9))  # the customer writes again


async def test_a_turn_waiting_for_n8n_is_due_as_soon_as_the_reply_settles(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    await _turn_at_n8n(store)
    [claim] = await store.turns.claim(10, 5000)
    assert claim.member == "c1"
    handoff_at = now_ms() + 180_000
    assert await store.defer_turn("c1", handoff_at)
    assert await redis.zscore(TURNS_DUE, "c1") == handoff_at
    await store.finish_turn("c1", "tok")
    assert (await redis.zscore(TURNS_DUE, "c1") or 0) <= now_ms()
    assert "turn_waiting" not in await store.conversation("c1")


async def test_a_turn_deferred_just_after_the_reply_settled_is_due_at_once(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    await _turn_at_n8n(store)
    assert await store.turns.claim(10, 5000)  # a replica reads the conversation...
    await store.finish_turn("c1", "tok")  # ...the reply settles before it defers the turn
    assert not await store.defer_turn("c1", now_ms() + 180_000)
    assert (await redis.zscore(TURNS_DUE, "c1") or 0) <= now_ms()


async def test_a_turn_reads_its_record_messages_and_history_in_one_call(
    redis: aioredis.Redis,
) -> None:
    from services.conversation.store import (
        ConversationStore,
        conversation_key,
        history_key,
        inbox_key,
    )

    store = ConversationStore(redis)
    await redis.hset(
        conversation_key("turn-view"), mapping={"id": "turn-view", "lead_id": "9100001"}
    )
    await redis.rpush(inbox_key("turn-view"), '{"id": "m1", "text": "oi"}')
    await redis.rpush(history_key("turn-view"), *[f'{{"n": {i}}}' for i in range(5)])
    conversation, pending, history = await store.turn_view("turn-view", 3)
    assert conversation == {"id": "turn-view", "lead_id": "9100001"}
    assert pending == [{"id": "m1", "text": "oi"}]
    assert history == [{"n": 2}, {"n": 3}, {"n": 4}]  # the newest, oldest first
    assert (await store.turn_view("turn-view", 0))[2] == []
    assert await store.turn_view("nobody", 3) == ({}, [], [])


async def test_the_apply_claims_a_turn_that_can_start_now_and_returns_what_it_reads(
    redis: aioredis.Redis,
) -> None:
    """Issue 22: no claim and no read after the apply. Only a turn due now, of an active
    conversation with no turn at n8n, that nobody holds."""
    store = ConversationStore(redis)
    offer = TurnOffer(now_ms() + 5_000, history_entries=4)
    assert (
        await store.apply_message(**_message("c-turn", "m1", 9, chat_id="chat-c-turn"), turn=offer)
        == Applied.APPLIED
    )
    assert offer.claim is not None and offer.claim.member == "c-turn"
    assert offer.claim.lease == offer.lease and not offer.claim.failing
    assert offer.conversation["lead_id"] == "9"
    assert [m["id"] for m in offer.pending] == ["m1"]
    assert [h["text"] for h in offer.history] == ["m1"]
    assert await redis.zscore(TURNS_DUE, "c-turn") == offer.lease  # leased, not due
    # Held (this claim): the next message's apply does not claim it, it makes it due.
    second = TurnOffer(now_ms() + 5_000, history_entries=4)
    assert (
        await store.apply_message(**_message("c-turn", "m2", 9, chat_id="chat-c-turn"), turn=second)
        == Applied.APPLIED
    )
    assert second.claim is None
    # A debounce (due later) and a turn at n8n are left to the pool as well.
    later = TurnOffer(now_ms() + 5_000, history_entries=4)
    message = _message("c-later", "m1", 10, chat_id="chat-c-later", due_ms=now_ms() + 2_000)
    assert await store.apply_message(**message, turn=later) == Applied.APPLIED
    assert later.claim is None
    await redis.hset("conv:c:c-busy", mapping={"bot_state": "active", "inflight_token": "t"})
    busy = TurnOffer(now_ms() + 5_000, history_entries=4)
    assert (
        await store.apply_message(**_message("c-busy", "m1", 11, chat_id="chat-c-busy"), turn=busy)
        == Applied.APPLIED
    )
    assert busy.claim is None
    # A failure of the turn on record: the claim says so (cleared when it goes through).
    await redis.hset(WORK_FAILING, "turn:c-fail", "{}")
    failing = TurnOffer(now_ms() + 5_000, history_entries=4)
    await store.apply_message(**_message("c-fail", "m1", 12, chat_id="chat-c-fail"), turn=failing)
    assert failing.claim is not None and failing.claim.failing


async def test_the_apply_acknowledges_its_entry_and_counts_the_message(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    stream = event_streams(store.event_partitions)[0]
    await redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
    entry = await redis.xadd(stream, {"e": "{}"})
    await redis.xreadgroup(WORKERS_GROUP, "me", {stream: ">"})
    await redis.hset(WORK_FAILING, "event:x", "{}")
    message = _message("c-ack", "m1", 9, chat_id="chat-c-ack", stream_id=text(entry), stream=stream)
    applied = await store.apply_message(
        **message, group=WORKERS_GROUP, failure_id="event:x", counter="messages_customer"
    )
    assert applied == Applied.APPLIED
    assert await redis.xlen(stream) == 0  # acknowledged and deleted in the same call
    assert (await redis.xpending(stream, WORKERS_GROUP))["pending"] == 0
    assert not await redis.hexists(WORK_FAILING, "event:x")
    assert await redis.hget(STATS, "messages_customer") == b"1"
    # A duplicate is acknowledged too, and not counted again.
    again = await redis.xadd(stream, {"e": "{}"})
    await redis.xreadgroup(WORKERS_GROUP, "me", {stream: ">"})
    duplicate = {**message, "stream_id": text(again)}
    assert (
        await store.apply_message(**duplicate, group=WORKERS_GROUP, counter="messages_customer")
        == Applied.DUPLICATE
    )
    assert await redis.xlen(stream) == 0
    assert await redis.hget(STATS, "messages_customer") == b"1"


async def turn_at_n8n(store: ConversationStore) -> None:
    """Conversation c1 (lead 9) with its turn's envelope at n8n: reply token "tok",
    envelope "ev"."""
    await store.apply_message(**_message("c1", "m1", 9))
    [claim] = await store.turns.claim(10, 5000)
    assert await store.commit_turn(
        conversation_id="c1",
        claim=claim,
        consumed=1,
        reply_token="tok",
        event_id="ev",
        payload="{}",
        url="http://n8n",
        check_after_ms=60_000,
        turn_started_ms=now_ms(),
    )


async def test_a_reply_reads_its_turn_conversation_and_idempotency_key_in_one_call(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    await turn_at_n8n(store)
    found = await store.reply_context("tok", "", "key-1")
    assert found.turn["conversation_id"] == "c1" and found.turn["event_id"] == "ev"
    assert found.conversation_id == "c1"
    assert found.conversation["lead_id"] == "9" and found.conversation["inflight_token"] == "tok"
    assert found.seen is None
    await store.begin_reply("key-1", "job-1", {"conversation_id": "c1", "text": "oi"}, 5000)
    assert (await store.reply_context("tok", "", "key-1")).seen == "job-1"
    by_id = await store.reply_context("", "c1", "key-1")
    assert (by_id.turn, by_id.conversation_id, by_id.seen) == ({}, "c1", "job-1")
    assert by_id.conversation == found.conversation
    unknown = await store.reply_context("no-such-token", "", "key-2")
    assert (unknown.turn, unknown.conversation_id, unknown.conversation, unknown.seen) == (
        {},
        "",
        {},
        None,
    )
    gone = await store.reply_context("", "c-gone", "key-2")
    assert (gone.conversation_id, gone.conversation) == ("c-gone", {})


async def test_the_ingest_recognises_the_echo_of_the_bridges_own_send_and_stores_nothing(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9))  # knows its chat
    await store.apply_message(**_message("c2", "m2", 10, chat_id=""))  # no chat yet
    sent = envelope.text_fingerprint("Olá! Como posso ajudar?")
    await store.remember_sent("c1", sent)
    await store.remember_sent("c2", sent)

    def streamed() -> Any:
        return asyncio.gather(*(redis.xlen(s) for s in event_streams(store.event_partitions)))

    before = sum(await streamed())
    bot_before = int(await redis.hget(STATS, ECHO_COUNTER) or 0)
    echo = Incoming(seen_key("e1"), "{}", "lead:9", lead=9, fingerprint=sent)
    assert await store.ingest(1, [echo]) == [Ingested.ECHO]
    assert await store.ingest(1, [echo]) == [Ingested.DUPLICATE]
    assert sum(await streamed()) == before, "an echo is not stored"
    assert int(await redis.hget(STATS, ECHO_COUNTER) or 0) == bot_before + 1
    # A text the bridge did not send, a lead without a conversation, and a conversation
    # that does not know its chat yet (the echo binds it): through the stream.
    other = envelope.text_fingerprint("escrito por uma pessoa")
    assert await store.ingest(
        1,
        [
            Incoming(seen_key("e2"), "{}", "lead:9", lead=9, fingerprint=other),
            Incoming(seen_key("e3"), "{}", "lead:11", lead=11, fingerprint=sent),
            Incoming(seen_key("e4"), "{}", "lead:10", lead=10, fingerprint=sent),
        ],
    ) == [Ingested.STORED, Ingested.STORED, Ingested.STORED]
    assert sum(await streamed()) == before + 3


async def test_the_ingest_stores_a_message_with_its_leads_conversation(
    redis: aioredis.Redis,
) -> None:
    """The reader applies a message to the conversation the ingest found for its lead
    (no lookup of its own); a lead without one yet stores none."""
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9))
    assert await store.ingest(
        1,
        [
            Incoming(seen_key("n1"), '{"n":1}', "lead:9", lead=9),
            Incoming(seen_key("n2"), '{"n":2}', "lead:12", lead=12),
        ],
    ) == [Ingested.STORED, Ingested.STORED]
    stored: dict[Any, Any] = {}
    for stream in event_streams(store.event_partitions):
        entries: Any = await redis.xrange(stream)
        for _, fields in entries:
            stored[fields[b"e"]] = fields
    assert stored[b'{"n":1}'].get(b"c") == b"c1"
    assert b"c" not in stored[b'{"n":2}']


async def test_the_apply_recognises_an_echo_the_ingest_could_not(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9, chat_id=""))
    sent = envelope.text_fingerprint("Olá! Como posso ajudar?")
    await store.remember_sent("c1", sent)
    echo = EchoCheck(sent, ECHO_COUNTER)
    applied = await store.apply_message(
        **_message("c1", "m2", 9, to_inbox=False, history_entry="x"), echo=echo
    )
    assert applied == Applied.APPLIED and echo.was_sent
    assert [e for e in await store.history("c1", 10) if e.get("text") == "x"] == []
    person = EchoCheck(envelope.text_fingerprint("outra coisa"), ECHO_COUNTER)
    await store.apply_message(**_message("c1", "m3", 9, to_inbox=False), echo=person)
    assert not person.was_sent
