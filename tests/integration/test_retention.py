"""Personal data has an end (LGPD): with DATA_RETENTION_DAYS every key of a conversation
expires after its last message, listings drop it, and an erase leaves nothing that work
in flight could bring back. Against a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import redis as sync_redis
import redis.asyncio as aioredis

from services.common.due_queue import Claim, now_ms, text
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import Applied, ConversationStore
from services.conversation.store.keys import (
    EVENTS_STREAM,
    WORKERS_GROUP,
    by_chat_key,
    by_lead_key,
    conversation_key,
    history_key,
    inbox_key,
)
from services.conversation.store.operations import Operations
from services.conversation.store.privacy import Privacy
from services.conversation.store.proactive import ProactiveStore
from services.scheduling.store import SchedulingStore

CONVERSATION, LEAD, CONTACT, CHAT = "conv-4f1e", 9100777, 8100777, "chat-5a2b"
PHONE, TEXT, REPLY = "+5511998877665", "quero saber da minha aposentadoria", "Olá! Posso ajudar."
# Dedupe markers hold only Kommo's message ids and keep their own 72 h.
_DEDUPE_PREFIX = b"conv:seen:"


def redis_contents(client: sync_redis.Redis) -> dict[str, str]:
    """Every key (but the dedupe markers) with its value as text: strings, hashes,
    lists, sets, sorted sets and streams."""
    out: dict[str, str] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(_DEDUPE_PREFIX):
            continue
        kind = text(cast(bytes, client.type(key)))
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out[key.decode()] = repr(value)
    return out


def leftovers(client: sync_redis.Redis, *needles: str) -> dict[str, str]:
    """Keys whose name or value contains any of these."""
    return {
        k: v
        for k, v in redis_contents(client).items()
        if any(n in k or n in v or json.dumps(n)[1:-1] in v for n in needles)
    }


async def _a_whole_conversation(redis: aioredis.Redis, retention_seconds: int) -> ConversationStore:
    """A conversation with a message, a turn at n8n, a delivered reply, a pause, a note
    for Kommo and a proactive start recorded."""
    store = ConversationStore(redis, retention_seconds)
    entry_id = await redis.xadd(EVENTS_STREAM, {"e": json.dumps({"lead_id": LEAD})})
    applied = await store.apply_message(
        conversation_id=CONVERSATION,
        message_id="m-1",
        inbox_entry=json.dumps({"id": "m-1", "text": TEXT, "phone": PHONE}),
        history_entry=json.dumps({"role": "customer", "text": TEXT}),
        at_ms=now_ms(),
        due_ms=now_ms(),
        lead_id=LEAD,
        contact_id=CONTACT,
        chat_id=CHAT,
        talk_id=7,
        to_inbox=True,
        history_max=10,
        stream_id=text(entry_id),
    )
    assert applied == Applied.APPLIED
    [claim] = await store.turns.claim(10, 5000)
    assert await store.commit_turn(
        conversation_id=CONVERSATION,
        claim=claim,
        consumed=1,
        reply_token="tok-1",
        event_id="ev-1",
        payload=json.dumps({"contact": {"phone": PHONE}, "messages": [{"text": TEXT}]}),
        url="http://n8n",
        check_after_ms=60_000,
        turn_started_ms=now_ms(),
    )
    await store.outbox_delivered(Claim("ev-1", 0))
    job = {"conversation_id": CONVERSATION, "lead_id": str(LEAD), "text": REPLY}
    assert await store.begin_reply("key-1", "job-1", job, 60_000) is None
    await store.remember_sent(CONVERSATION, "fingerprint")
    await store.reply_delivered("job-1", CONVERSATION, {"role": "bot", "text": REPLY}, 10)
    await store.reply_done(Claim("job-1", 0))
    bots = BotStore(redis, retention_seconds)
    assert await bots.set_state(CONVERSATION, "paused", "Ana", "negociação", now_ms() + 60_000)
    assert await bots.add_notification(
        "note-1", {"lead_id": str(LEAD), "note": REPLY}, 60_000, CONVERSATION
    )
    proactive = ProactiveStore(redis, retention_seconds)
    assert await proactive.claim_start(LEAD, "form", CONVERSATION, 3600) is None
    assert await proactive.add_job(
        proactive.waiting,
        "pjob-1",
        {"conversation_id": CONVERSATION, "text": TEXT},
        now_ms() + 60_000,
    )
    return store


async def test_every_key_holding_a_conversation_has_a_ttl_within_the_retention_time(
    redis: aioredis.Redis, redis_url: str
) -> None:
    retention = 3600
    await _a_whole_conversation(redis, retention)
    client = sync_redis.Redis.from_url(redis_url)
    theirs = leftovers(client, CONVERSATION, str(LEAD), str(CONTACT), CHAT, PHONE, TEXT, REPLY)
    assert theirs, "the conversation is stored"
    # Global indexes and queues list the conversation by id; they live with the service.
    queues = {k for k in theirs if client.type(k) == b"zset" and not k.startswith("conv:c:")}
    assert queues <= {
        "conv:index",
        "conv:bot-states",
        "conv:turns:due",
        "conv:resumes:due",
        "conv:handoffs:due",
        "conv:notify:due",
        "conv:proactive:due",
        "conv:replies:due",
    }
    for key in set(theirs) - queues - {"conv:events"}:
        ttl = client.pttl(key)
        assert 0 < ttl <= retention * 1000, f"{key} has no TTL within the retention time ({ttl})"


async def test_with_a_tiny_retention_every_key_expires_and_listings_drop_the_conversation(
    redis: aioredis.Redis, redis_url: str
) -> None:
    await redis.xgroup_create(EVENTS_STREAM, WORKERS_GROUP, id="0", mkstream=True)
    await _a_whole_conversation(redis, retention_seconds=1)
    await redis.delete(EVENTS_STREAM)  # applied events are deleted by the consumer
    ops = Operations(redis, retention_seconds=1)
    assert await ops.conversation_ids() == [CONVERSATION]
    client = sync_redis.Redis.from_url(redis_url)
    needles = (CONVERSATION, str(LEAD), str(CONTACT), CHAT, PHONE, TEXT, REPLY)
    deadline = time.monotonic() + 15
    while await ops.conversation_ids() or await redis.exists(f"conv:c:{CONVERSATION}"):
        assert time.monotonic() < deadline, "the conversation never expired"
        await asyncio.sleep(0.1)
    assert await ops.conversation_ids() == []
    # Its keys are gone by themselves; the sweep takes it out of the queues and indexes.
    await Privacy(redis, retention_seconds=1).sweep()
    assert leftovers(client, *needles) == {}


async def test_an_erase_leaves_nothing_and_work_in_flight_does_not_bring_it_back(
    redis: aioredis.Redis, redis_url: str
) -> None:
    store = await _a_whole_conversation(redis, retention_seconds=0)
    other = ConversationStore(redis)
    await other.apply_message(
        conversation_id="conv-other",
        message_id="m-9",
        inbox_entry="{}",
        history_entry=json.dumps({"role": "customer", "text": "outra pessoa"}),
        at_ms=now_ms(),
        due_ms=now_ms(),
        lead_id=9100888,
        contact_id=8100888,
        chat_id="chat-other",
        talk_id=0,
        to_inbox=True,
        history_max=10,
    )
    pending = await redis.xadd(EVENTS_STREAM, {"e": json.dumps({"lead_id": LEAD, "text": TEXT})})
    erasure = await Privacy(redis).erase(lead_id=LEAD)
    assert erasure.counts["conversations"] == 1
    assert erasure.counts["webhook_events"] == 2
    assert erasure.contact_ids == {CONTACT}
    assert erasure.delivery_keys == {"key-1"}

    # A worker that read the event, sent the reply or was pausing meanwhile writes nothing.
    applied = await store.apply_message(
        conversation_id=CONVERSATION,
        message_id="m-2",
        inbox_entry="{}",
        history_entry=json.dumps({"role": "customer", "text": TEXT}),
        at_ms=now_ms(),
        due_ms=now_ms(),
        lead_id=LEAD,
        contact_id=CONTACT,
        chat_id=CHAT,
        talk_id=0,
        to_inbox=True,
        history_max=10,
        stream_id=text(pending),
    )
    assert applied == Applied.ERASED
    await store.remember_sent(CONVERSATION, "fingerprint")
    await store.reply_delivered("job-1", CONVERSATION, {"role": "bot", "text": REPLY}, 10)
    await store.update_reply_job("job-1", attempts=2)
    await store.reply_done(Claim("job-1", 0))
    await store.outbox_delivered(Claim("ev-1", 0))
    await store.outbox_failed(Claim("ev-1", 0), "n8n down", None)
    assert await BotStore(redis).set_state(CONVERSATION, "active", "Ana", "", 0) is None
    assert not await BotStore(redis).add_notification("n-2", {"note": REPLY}, 1000, CONVERSATION)

    client = sync_redis.Redis.from_url(redis_url)
    assert leftovers(client, CONVERSATION, str(LEAD), str(CONTACT), CHAT, PHONE, TEXT, REPLY) == {}
    assert await Operations(redis).conversation_ids() == ["conv-other"]
    assert leftovers(client, "outra pessoa"), "another lead's conversation is untouched"
    again = await Privacy(redis).erase(lead_id=LEAD)
    assert sum(again.counts.values()) == 0


async def test_scheduling_requests_are_erased_by_lead_or_contact_and_live_at_most_the_retention(
    redis: aioredis.Redis, redis_url: str
) -> None:
    store = SchedulingStore(redis, retention_seconds=600)
    assert await store.claim_slot(LEAD, "2026-12-01T14:30", "req-1", 30 * 86400) is None
    record = {"id": "req-1", "lead_id": str(LEAD), "payload": json.dumps({"phone": PHONE})}
    await store.create("req-1", record, now_ms(), contact_id=CONTACT)
    client = sync_redis.Redis.from_url(redis_url)
    for key in leftovers(client, str(LEAD), PHONE):
        if key != "sched:outbox:due":
            assert 0 < client.pttl(key) <= 600_000, key
    counts = await SchedulingStore(redis).erase([], [CONTACT])
    assert counts["requests"] == 1
    await store.update("req-1", status="delivered")  # its delivery, in flight
    assert await store.get("req-1") == {}
    await SchedulingStore(redis).erase([LEAD], [])
    assert leftovers(client, str(LEAD), str(CONTACT), PHONE, "req-1") == {}


async def _a_message(store: ConversationStore, message_id: str, *, lead_id: int = LEAD) -> None:
    entry_id = await store.redis.xadd(EVENTS_STREAM, {"e": json.dumps({"lead_id": lead_id})})
    applied = await store.apply_message(
        conversation_id=CONVERSATION,
        message_id=message_id,
        inbox_entry=json.dumps({"id": message_id, "text": TEXT}),
        history_entry=json.dumps({"role": "customer", "text": TEXT}),
        at_ms=now_ms(),
        due_ms=now_ms() + 60_000,
        lead_id=lead_id,
        contact_id=CONTACT,
        chat_id=CHAT,
        talk_id=7,
        to_inbox=True,
        history_max=10,
        stream_id=text(entry_id),
    )
    assert applied == Applied.APPLIED


async def test_a_conversation_re_expires_its_keys_about_once_a_day_not_on_every_message(
    redis: aioredis.Redis,
) -> None:
    """Issue 22: re-expiring every key of a conversation on every message was ~40
    PEXPIREs a message. Its keys are re-expired once the conversation has lived a
    ninetieth of R (a day of 90) since the last time; a key made in between gets its
    lifetime where it is made, never past the conversation's."""
    retention = 9000  # R/90 = 100 s
    store = ConversationStore(redis, retention)
    conv, inbox, history = (
        conversation_key(CONVERSATION),
        inbox_key(CONVERSATION),
        history_key(CONVERSATION),
    )
    await _a_message(store, "m-1")
    assert await redis.pttl(conv) > retention * 1000 - 5_000

    # 50 s later (less than R/90): nothing is re-expired, and a list made meanwhile (the
    # inbox, emptied by a turn) lives as long as the conversation, no longer.
    for key in (conv, history, by_lead_key(LEAD), by_chat_key(CHAT)):
        await redis.pexpire(key, (retention - 50) * 1000)
    await redis.delete(inbox)
    await _a_message(store, "m-2")
    assert await redis.pttl(conv) <= (retention - 50) * 1000
    assert await redis.pttl(history) <= (retention - 50) * 1000
    assert 0 < await redis.pttl(inbox) <= (retention - 50) * 1000

    # A pointer made meanwhile (the lead changed its by-lead key) lives as its
    # conversation does, and one kept keeps its lifetime.
    await redis.delete(by_lead_key(LEAD))
    await _a_message(store, "m-3")
    assert 0 < await redis.pttl(by_lead_key(LEAD)) <= (retention - 50) * 1000
    assert 0 < await redis.pttl(by_chat_key(CHAT)) <= (retention - 50) * 1000

    # 150 s later (past R/90): the next message gives every key R again.
    for key in (conv, inbox, history, by_lead_key(LEAD), by_chat_key(CHAT)):
        await redis.pexpire(key, (retention - 150) * 1000)
    await _a_message(store, "m-4")
    for key in (conv, inbox, history, by_lead_key(LEAD), by_chat_key(CHAT)):
        assert await redis.pttl(key) > retention * 1000 - 5_000, key
