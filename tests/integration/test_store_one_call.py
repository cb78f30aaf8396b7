"""The calls that do a step's work in one round trip (issue 22), against a real Redis: the
ingest that applies a customer's message with its ack, and the reply checked and taken
in one call."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from services.common.due_queue import now_ms
from services.conversation import envelope
from services.conversation.store.conversations import (
    Applied,
    ApplyHere,
    ConversationStore,
    Incoming,
    Ingested,
    TurnOffer,
)
from services.conversation.store.keys import STATS, TURNS_DUE, event_streams, seen_key
from tests.integration.test_conversation_store import _message, turn_at_n8n


def _here(store: ConversationStore, message_id: str, lead_id: int, **overrides: Any) -> ApplyHere:
    """A customer's message offered to the ingest to apply (as EventStage.apply_here)."""
    fields = _message("", message_id, lead_id, **overrides)
    inbox = json.dumps({"id": message_id, "created_at": 1})[:-1]  # the ingest adds "seq"
    turn = overrides.pop("turn", None)
    return ApplyHere(
        store.apply_args(**{**fields, "inbox_entry": inbox, "counter": "messages_customer"}),
        turn,
    )


async def test_the_ingest_applies_a_customers_message_when_its_partition_holds_nothing(
    redis: aioredis.Redis,
) -> None:
    """Nothing of its partition waits in the stream: the message is applied in the same
    call as its ack (no entry, no read, no apply of its own), its "seq" made of Redis'
    clock; a second delivery is a duplicate; the turn offered with it is claimed."""
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9))
    await redis.zrem(TURNS_DUE, "c1")  # m1 waits in the inbox; nobody holds its turn
    counted = int(await redis.hget(STATS, "messages_customer") or 0)
    before_ms = now_ms()
    offer = TurnOffer(now_ms() + 5000, 10)
    here = _here(store, "m2", 9, turn=offer)
    incoming = Incoming(seen_key("m2"), '{"n":2}', "lead:9", lead=9, here=here)
    assert await store.ingest(1, [incoming]) == [Ingested.APPLIED]
    assert (here.outcome, here.conversation_id) == (Applied.APPLIED, "c1")
    assert sum([await redis.xlen(s) for s in event_streams(store.event_partitions)]) == 0
    assert [h["text"] for h in await store.history("c1", 10)] == ["m1", "m2"]
    assert int(await redis.hget(STATS, "messages_customer") or 0) == counted + 1
    # The turn was claimed for the caller, with what it reads.
    assert offer.claim is not None and offer.claim.member == "c1"
    assert [m["id"] for m in offer.pending] == ["m1", "m2"]
    stamp, dash, n = offer.pending[-1]["seq"].partition("-")
    assert dash and before_ms <= int(stamp) <= now_ms() and n == "0"
    again = _here(store, "m2", 9)
    assert await store.ingest(
        1, [Incoming(seen_key("m2"), '{"n":2}', "lead:9", lead=9, here=again)]
    ) == [Ingested.DUPLICATE]
    assert again.outcome is None


async def test_the_ingest_leaves_a_message_to_the_stream_when_its_partition_has_one_waiting(
    redis: aioredis.Redis,
) -> None:
    """An event of the partition waits (read or not, not applied yet): the message goes
    after it, through the stream, so its conversation's order holds; so does a message
    whose lead's conversation went to another lead."""
    store = ConversationStore(redis)
    await store.apply_message(**_message("c1", "m1", 9))
    waiting = Incoming(seen_key("w1"), '{"n":1}', "lead:9", lead=9)
    assert await store.ingest(1, [waiting]) == [Ingested.STORED]
    here = _here(store, "m2", 9)
    assert await store.ingest(
        1, [Incoming(seen_key("m2"), '{"n":2}', "lead:9", lead=9, here=here)]
    ) == [Ingested.STORED]
    assert here.outcome is None
    assert sum([await redis.xlen(s) for s in event_streams(store.event_partitions)]) == 2
    assert [h["text"] for h in await store.history("c1", 10)] == ["m1"]
    # Another lead's conversation (its pointer left behind): through the stream.
    store2 = ConversationStore(redis, event_partitions=1)
    for stream in event_streams(1):
        await redis.delete(stream)
    await store2.apply_message(**_message("c3", "m3", 30))
    await redis.set("conv:by-lead:31", "c3")
    other = _here(store2, "m4", 31)
    assert await store2.ingest(
        1, [Incoming(seen_key("m4"), '{"n":4}', "lead:31", lead=31, here=other)]
    ) == [Ingested.STORED]
    assert other.outcome is None
    assert [h["text"] for h in await store2.history("c3", 10)] == ["m3"]


async def test_take_reply_checks_a_reply_and_starts_its_job_in_one_call(
    redis: aioredis.Redis,
) -> None:
    """take_reply answers as reply_context's checks would, and begun, the job holds the
    conversation's lead and chat and the turn's envelope, leased to the caller, with its
    texts remembered for their echo; the same key again is a duplicate."""
    store = ConversationStore(redis)
    await turn_at_n8n(store)
    unknown = await store.take_reply("no-such", "", "k0", "j0", {"text": "oi"}, now_ms())
    assert (unknown.outcome, unknown.conversation_id) == ("unknown_token", "")
    gone = await store.take_reply("", "c-gone", "k0", "j0", {"text": "oi"}, now_ms())
    assert (gone.outcome, gone.conversation_id) == ("gone", "c-gone")
    lease = now_ms() + 5000
    sent = envelope.text_fingerprint("oi")
    taken = await store.take_reply(
        "tok", "", "k1", "j1", {"text": "oi", "state": "pending"}, lease, fingerprints=[sent]
    )
    assert (taken.outcome, taken.conversation_id) == ("begun", "c1")
    assert taken.conversation["lead_id"] == "9" and taken.turn["event_id"] == "ev"
    job = await store.reply_job("j1")
    assert {k: job[k] for k in ("conversation_id", "lead_id", "chat_id", "event_id", "text")} == {
        "conversation_id": "c1",
        "lead_id": "9",
        "chat_id": "chat",
        "event_id": "ev",
        "text": "oi",
    }
    assert await redis.zscore("conv:replies:due", "j1") == lease
    assert await redis.sismember("conv:c:c1:sent", sent)
    again = await store.take_reply("tok", "", "k1", "j2", {"text": "oi"}, now_ms())
    assert (again.outcome, again.seen) == ("duplicate", "j1")
    assert await store.reply_job("j2") == {}
    await redis.hset("conv:c:c1", "bot_state", "paused")
    paused = await store.take_reply("", "c1", "k3", "j3", {"text": "oi"}, now_ms())
    assert (paused.outcome, paused.conversation["bot_state"]) == ("paused", "paused")
    await redis.hset("conv:c:c1", mapping={"bot_state": "active", "lead_id": "0", "chat_id": ""})
    nowhere = await store.take_reply("", "c1", "k4", "j4", {"text": "oi"}, now_ms())
    assert nowhere.outcome == "no_address"
    assert await store.reply_job("j3") == {} and await store.reply_job("j4") == {}
