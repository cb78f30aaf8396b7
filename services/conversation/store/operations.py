"""What operators read and do: listings, debugging, reset, dead letters, queue sizes."""

from __future__ import annotations

import json
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import now_ms, text, text_map
from services.conversation.store.keys import (
    CONVERSATIONS,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    bot_log_key,
    conversation_key,
    history_key,
    inbox_key,
    outbox_item_key,
    retention_ms,
)
from services.conversation.store.privacy import Erasure, Privacy


class Operations:
    """What operators read and do: listings, debugging, reset, dead letters."""

    def __init__(self, redis: aioredis.Redis, retention_seconds: int = 0) -> None:
        self.redis = redis
        self._r_ms = retention_ms(retention_seconds)
        self._privacy = Privacy(redis, retention_seconds)

    async def conversation_ids(self, limit: int = 10_000) -> list[str]:
        """The most recent conversations; never one past the retention time, whose keys
        are gone (the sweep takes it out of the index later)."""
        oldest = now_ms() - self._r_ms if self._r_ms else "-inf"
        raw = await self.redis.zrevrangebyscore(CONVERSATIONS, "+inf", oldest, 0, limit)
        return [text(x) for x in cast(list[bytes], raw)]

    async def conversations(self, ids: list[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                pipe.hgetall(conversation_key(conversation_id))
            found = await pipe.execute()
        return [text_map(raw) for raw in found if raw]

    async def pending_counts(self, ids: list[str]) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                pipe.llen(inbox_key(conversation_id))
            return [int(n) for n in await pipe.execute()]

    async def dump(self, conversation_id: str) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(conversation_key(conversation_id))
            pipe.lrange(inbox_key(conversation_id), 0, -1)
            pipe.lrange(history_key(conversation_id), 0, -1)
            pipe.lrange(bot_log_key(conversation_id), 0, -1)
            state, inbox, history, log = await pipe.execute()
        return {
            "conversation": text_map(state),
            "pending_messages": [json.loads(x) for x in inbox],
            "history": [json.loads(x) for x in history],
            "bot_log": [json.loads(x) for x in log],
        }

    async def reset(self, ids: list[str]) -> tuple[int, int]:
        """Forget these conversations, deleted as an erase deletes them
        (Privacy.erase_conversations: every key, queued work item and failure record of
        each); returns how many conversations and keys were deleted."""
        erasure = Erasure()
        await self._privacy.erase_conversations(ids, erasure)
        return erasure.counts["conversations"], erasure.counts["keys"]

    async def dead_letters(self, limit: int) -> list[tuple[str, float, dict[str, str]]]:
        entries = await self.redis.zrevrange(OUTBOX_DEAD, 0, limit - 1, withscores=True)
        out = []
        for member, score in cast(list[tuple[bytes, float]], entries):
            event_id = text(member)
            item = text_map(await self.redis.hgetall(outbox_item_key(event_id)))
            if not item:  # expired with its conversation
                await self.redis.zrem(OUTBOX_DEAD, event_id)
                continue
            out.append((event_id, float(score) / 1000, item))
        return out

    async def replay(self, event_id: str) -> bool:
        """Back into the outbox, attempts from zero; False if it is not a dead letter."""
        if await self.redis.zscore(OUTBOX_DEAD, event_id) is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(OUTBOX_DEAD, event_id)
            pipe.hset(outbox_item_key(event_id), "attempts", 0)
            pipe.zadd(OUTBOX_DUE, {event_id: now_ms()})
            await pipe.execute()
        return True

    async def dead_letters_since(self, since_ms: int) -> int:
        """n8n deliveries parked at or after `since_ms`."""
        return int(await self.redis.zcount(OUTBOX_DEAD, since_ms, "+inf"))

    async def queue_sizes(self) -> tuple[int, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(OUTBOX_DUE)
            pipe.zcard(OUTBOX_DEAD)
            pending, dead = await pipe.execute()
        return int(pending), int(dead)
