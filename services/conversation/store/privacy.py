"""Erasing a lead's or a contact's data (LGPD), and the retention sweep. Deleting a
conversation is done here only (`Privacy.erase_conversations`, lua/erase_conversation.lua):
an erase, the sweep and a reset (operations.py) all delete it this way."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import cast

import redis.asyncio as aioredis

from services.common.due_queue import Failure, now_ms, text, text_map
from services.conversation.store.keys import (
    CONVERSATIONS,
    DEFAULT_EVENT_PARTITIONS,
    FALLBACKS_DUE,
    HANDOFFS_DUE,
    NOTIFY_DUE,
    NOTIFY_PREFIX,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    OUTBOX_PREFIX,
    PAGE,
    PROACTIVE_DUE,
    PROACTIVE_JOB_PREFIX,
    REPLIES_DUE,
    REPLY_JOB_PREFIX,
    REPLY_KEY_PREFIX,
    RESUMES_DUE,
    TURNS_DUE,
    WORK_FAILURES,
    WORKERS_GROUP,
    applied_key,
    bot_log_key,
    by_chat_key,
    by_contact_key,
    by_lead_key,
    conversation_key,
    event_streams,
    history_key,
    inbox_key,
    keys_index_key,
    notify_key,
    retention_ms,
    sent_key,
)
from services.conversation.store.scripts import register

# The due queues a conversation's work items wait in, by the prefix of the item's key.
_QUEUES_BY_PREFIX = {
    OUTBOX_PREFIX: (OUTBOX_DUE, OUTBOX_DEAD),
    REPLY_JOB_PREFIX: (REPLIES_DUE,),
    NOTIFY_PREFIX: (NOTIFY_DUE,),
    PROACTIVE_JOB_PREFIX: (PROACTIVE_DUE, FALLBACKS_DUE),
}
# Queues whose items name their conversation: also searched by an erase, for items
# queued before conversations had a key index.
_QUEUES_NAMING_CONVERSATIONS = (
    (OUTBOX_DUE, OUTBOX_PREFIX),
    (OUTBOX_DEAD, OUTBOX_PREFIX),
    (REPLIES_DUE, REPLY_JOB_PREFIX),
    (PROACTIVE_DUE, PROACTIVE_JOB_PREFIX),
    (FALLBACKS_DUE, PROACTIVE_JOB_PREFIX),
)


# What an erase counts, every kind always (0 when nothing was held): a repeated erase
# answers in the same shape as the first.
ERASED_KINDS = (
    "conversations",
    "messages",
    "keys",
    "queued_work",
    "failure_records",
    "webhook_events",
)


@dataclass
class Erasure:
    """What an erase removed, and whose data it was (for the other services' erase)."""

    counts: Counter[str] = dataclass_field(
        default_factory=lambda: Counter(dict.fromkeys(ERASED_KINDS, 0))
    )
    lead_ids: set[int] = dataclass_field(default_factory=set)
    contact_ids: set[int] = dataclass_field(default_factory=set)
    chat_ids: set[str] = dataclass_field(default_factory=set)
    delivery_keys: set[str] = dataclass_field(default_factory=set)


class Privacy:
    """Erasing a lead's or a contact's data (LGPD), and the retention sweep."""

    def __init__(
        self,
        redis: aioredis.Redis,
        retention_seconds: int = 0,
        event_partitions: int = DEFAULT_EVENT_PARTITIONS,
    ) -> None:
        self.redis = redis
        self._r_ms = retention_ms(retention_seconds)
        self._event_streams = event_streams(event_partitions)
        self._erase = register(redis, "erase_conversation")

    async def conversations_of(self, lead_id: int = 0, contact_id: int = 0) -> list[str]:
        """Every conversation of this lead, or of this contact (all its leads'): the
        indexes, then every listed conversation's own record (an index holds only the
        latest one)."""
        found: set[str] = set()
        pointers = [by_lead_key(lead_id)] if lead_id else []
        pointers += [by_contact_key(contact_id)] if contact_id else []
        for value in await self.redis.mget(pointers) if pointers else []:
            if value:
                found.add(text(value))
        start = 0
        while True:
            ids = [
                text(x)
                for x in cast(
                    list[bytes], await self.redis.zrange(CONVERSATIONS, start, start + PAGE - 1)
                )
            ]
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation_id in ids:
                    pipe.hmget(conversation_key(conversation_id), "lead_id", "contact_id")
                rows = await pipe.execute()
            for conversation_id, (lead, contact) in zip(ids, rows, strict=True):
                if (lead_id and lead and int(lead) == lead_id) or (
                    contact_id and contact and int(contact) == contact_id
                ):
                    found.add(conversation_id)
            start += PAGE
        return sorted(found)

    async def erase(self, lead_id: int = 0, contact_id: int = 0) -> Erasure:
        """Everything held about a lead or a contact: its conversations with every key,
        queued work item, failure record and unprocessed webhook event. Idempotent."""
        erasure = Erasure()
        if lead_id:
            erasure.lead_ids.add(lead_id)
        if contact_id:
            erasure.contact_ids.add(contact_id)
        ids = await self.conversations_of(lead_id, contact_id)
        await self.erase_conversations(ids, erasure)
        # The indexes of the lead or contact itself, whatever they point to.
        keys = [by_lead_key(lead_id)] if lead_id else []
        keys += [by_contact_key(contact_id)] if contact_id else []
        if keys:
            erasure.counts["keys"] += int(await self.redis.delete(*keys))
        await self._erase_events(erasure)
        return erasure

    async def erase_conversations(
        self, ids: list[str], erasure: Erasure, cutoff_ms: int = 0
    ) -> None:
        """Erase these conversations (with `cutoff_ms`, only those without a message
        since then), their queued items and failure records."""
        erased: set[str] = set()
        item_keys: set[str] = set()
        for conversation_id in ids:
            if await self._erase_one(conversation_id, erasure, item_keys, cutoff_ms):
                erased.add(conversation_id)
        if erased:
            await self._erase_queued(erased, erasure, item_keys)
            await self._erase_failures(erased, erasure, item_keys)

    async def _erase_one(
        self, conversation_id: str, erasure: Erasure, item_keys: set[str], cutoff_ms: int
    ) -> bool:
        conv = conversation_key(conversation_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(conv)
            pipe.zrange(keys_index_key(conversation_id), 0, -1)
            pipe.llen(history_key(conversation_id))
            pipe.llen(inbox_key(conversation_id))
            raw_state, raw_members, history, inbox = await pipe.execute()
        state = text_map(raw_state)
        members = [text(m) for m in raw_members]
        pointers = []
        if state.get("lead_id", "0") != "0":
            erasure.lead_ids.add(int(state["lead_id"]))
            pointers.append(by_lead_key(int(state["lead_id"])))
        if state.get("contact_id", "0") != "0":
            erasure.contact_ids.add(int(state["contact_id"]))
            pointers.append(by_contact_key(int(state["contact_id"])))
        if state.get("chat_id"):
            erasure.chat_ids.add(state["chat_id"])
            pointers.append(by_chat_key(state["chat_id"]))
        unqueue: list[tuple[str, str]] = [
            (queue, conversation_id) for queue in (TURNS_DUE, RESUMES_DUE, HANDOFFS_DUE)
        ]
        for key in members:
            for prefix, queues in _QUEUES_BY_PREFIX.items():
                if key.startswith(prefix):
                    unqueue += [(queue, key.removeprefix(prefix)) for queue in queues]
            if key.startswith(REPLY_KEY_PREFIX):
                erasure.delivery_keys.add(key.removeprefix(REPLY_KEY_PREFIX))
        item_keys.update(members)
        unqueue.append((CONVERSATIONS, conversation_id))
        order = {
            "id": conversation_id,
            "cutoff": cutoff_ms,
            "delete": [
                conv,
                inbox_key(conversation_id),
                history_key(conversation_id),
                applied_key(conversation_id),
                sent_key(conversation_id),
                bot_log_key(conversation_id),
                keys_index_key(conversation_id),
                *members,
            ],
            "pointers": pointers,
            "unqueue": unqueue,
        }
        keys, queued = cast(
            list[int], await self._erase(keys=[CONVERSATIONS], args=[json.dumps(order)])
        )
        if keys < 0:
            return False
        erasure.counts["conversations"] += 1 if state else 0
        erasure.counts["messages"] += int(history) + int(inbox)
        erasure.counts["keys"] += keys
        erasure.counts["queued_work"] += queued
        return True

    async def _erase_queued(self, erased: set[str], erasure: Erasure, item_keys: set[str]) -> None:
        """Work items of these conversations still queued but not in their key index
        (queued before it existed, or in flight while it was read)."""
        for queue, prefix in _QUEUES_NAMING_CONVERSATIONS:
            members = [text(m) for m in cast(list[bytes], await self.redis.zrange(queue, 0, -1))]
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hget(prefix + member, "conversation_id")
                owners = await pipe.execute()
            for member, owner in zip(members, owners, strict=True):
                if owner and text(owner) in erased:
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.delete(prefix + member)
                        pipe.zrem(queue, member)
                        deleted, unqueued = await pipe.execute()
                    erasure.counts["keys"] += int(deleted)
                    erasure.counts["queued_work"] += int(unqueued)
                    item_keys.add(prefix + member)
        members = [text(m) for m in cast(list[bytes], await self.redis.zrange(NOTIFY_DUE, 0, -1))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hget(notify_key(member), "lead_id")
            leads = await pipe.execute()
        for member, lead in zip(members, leads, strict=True):
            if lead and int(lead) in erasure.lead_ids:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(notify_key(member))
                    pipe.zrem(NOTIFY_DUE, member)
                    deleted, unqueued = await pipe.execute()
                erasure.counts["keys"] += int(deleted)
                erasure.counts["queued_work"] += int(unqueued)

    async def _erase_failures(
        self, erased: set[str], erasure: Erasure, item_keys: set[str]
    ) -> None:
        """Failure records (failing work and dead letters, shown on the dashboard) of
        these conversations, of their work items, or holding an event of theirs."""
        members = {key.split(":", 2)[-1] for key in item_keys}

        def theirs(record: Failure) -> bool:
            return (
                record.conversation_id in erased
                or record.member in members
                or self._event_matches(record.payload, erasure)
            )

        await self._drop_failures(theirs, erasure)

    async def _drop_failures(self, theirs: Callable[[Failure], bool], erasure: Erasure) -> None:
        failing = f"{WORK_FAILURES}:failing"
        dead, dead_info = f"{WORK_FAILURES}:dead", f"{WORK_FAILURES}:dead:info"
        for key in (failing, dead_info):
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(key))
            gone = [field for field, value in raw.items() if theirs(Failure.from_json(value))]
            if gone:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(key, *gone)
                    if key == dead_info:
                        pipe.zrem(dead, *gone)
                    await pipe.execute()
                erasure.counts["failure_records"] += len(gone)

    @staticmethod
    def _event_matches(payload: str, erasure: Erasure) -> bool:
        """A webhook event (as stored in the stream) of these leads, contacts or chats."""
        if not payload:
            return False
        try:
            event = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(event, dict):
            return False
        return (
            _as_int(event.get("lead_id")) in erasure.lead_ids
            or _as_int(event.get("contact_id")) in erasure.contact_ids
            or (bool(event.get("chat_id")) and str(event.get("chat_id")) in erasure.chat_ids)
        )

    async def _erase_events(self, erasure: Erasure) -> None:
        """Webhook events of these leads, contacts or chats not yet applied: deleted (and
        acknowledged), so a worker that already read one does not apply it
        (apply_message checks that its entry is still there)."""
        for stream in self._event_streams:
            await self._erase_stream_events(stream, erasure)

    async def _erase_stream_events(self, stream: str, erasure: Erasure) -> None:
        start = "-"
        while True:
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await self.redis.xrange(stream, start, "+", count=PAGE),
            )
            ids = [
                text(entry_id)
                for entry_id, fields in entries
                if self._event_matches(text(fields.get(b"e", b"")), erasure)
            ]
            if ids:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xack(stream, WORKERS_GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    await pipe.execute()
                erasure.counts["webhook_events"] += len(ids)
            if len(entries) < PAGE:
                return
            start = "(" + text(entries[-1][0])

    async def sweep(self, limit: int = PAGE) -> Counter[str]:
        """Erase what is past the retention time: conversations without a message for
        longer (their keys have expired, or predate the retention setting), and failure
        records older than it."""
        erasure = Erasure()
        if not self._r_ms:
            return erasure.counts
        cutoff = now_ms() - self._r_ms
        ids = [
            text(x)
            for x in cast(
                list[bytes],
                await self.redis.zrangebyscore(CONVERSATIONS, "-inf", f"({cutoff}", 0, limit),
            )
        ]
        await self.erase_conversations(ids, erasure, cutoff_ms=cutoff)
        await self._drop_failures(lambda r: r.last_failed_at * 1000 < cutoff, erasure)
        return erasure.counts


def _as_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
