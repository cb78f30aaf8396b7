"""Every Redis key of the conversation service, with its lifetime and why, and the
Lua scripts that keep multi-key changes atomic.

Due queues (turns, outbox, replies) are sorted sets scored by the time an item is due,
in integer milliseconds. Claiming an item re-scores it to the end of a lease instead of
removing it, so the work of a replica that dies is due again when the lease ends; an
item is removed only by the holder of that exact lease.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

EVENTS_STREAM = "conv:events"  # webhook events, durable until a worker has applied them
WORKERS_GROUP = "workers"
EVENT_ATTEMPTS = "conv:events:attempts"  # failures per stream entry, to park poison events
EVENTS_DEAD = "conv:events:dead"  # parked events (list), kept until an operator looks
WEBHOOKS_LAST = "conv:webhooks:last"
WEBHOOKS_TOTAL = "conv:webhooks:total"
TURNS_DUE = "conv:turns:due"
OUTBOX_DUE = "conv:outbox:due"
OUTBOX_DEAD = "conv:outbox:dead"  # event_id → parked at (ms); the item hash stays
REPLIES_DUE = "conv:replies:due"

# Kommo retries a delivery for a while and SPEC.md §3.1 asks for at least 72 h.
SEEN_TTL_SECONDS = 72 * 3600
# A reply token must outlive the longest n8n retry schedule (1 h) with margin.
REPLY_TOKEN_TTL_SECONDS = 7 * 24 * 3600
# The bridge's own sends are recognised in their echo for this long.
SENT_TTL_SECONDS = 24 * 3600


def seen_key(message_id: str) -> str:
    return f"conv:seen:{message_id}"


def conversation_key(conversation_id: str) -> str:
    return f"conv:c:{conversation_id}"


def by_lead_key(lead_id: int) -> str:
    return f"conv:by-lead:{lead_id}"


def inbox_key(conversation_id: str) -> str:
    return f"conv:c:{conversation_id}:inbox"


def history_key(conversation_id: str) -> str:
    return f"conv:c:{conversation_id}:history"


def applied_key(conversation_id: str) -> str:
    """Message ids already applied (at-least-once delivery must apply each once)."""
    return f"conv:c:{conversation_id}:applied"


def sent_key(conversation_id: str) -> str:
    return f"conv:c:{conversation_id}:sent"


def reply_token_key(token: str) -> str:
    return f"conv:reply-token:{token}"


def outbox_item_key(event_id: str) -> str:
    return f"conv:outbox:{event_id}"


def reply_job_key(job_id: str) -> str:
    return f"conv:reply-job:{job_id}"


def reply_idempotency_key(key: str) -> str:
    return f"conv:reply-key:{key}"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_map(raw: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


# Dedupe then append, in that order: a failure half-way leaves a possible duplicate
# (absorbed by the applied-set of the worker), never a message marked seen but lost.
_INGEST = """
local out = {}
for i = 4, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[3])
return out
"""

_APPLY_MESSAGE = """
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[13])
redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[5])
redis.call('HSETNX', KEYS[1], 'bot_state', 'active')
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
if ARGV[7] ~= '0' then
  redis.call('HSET', KEYS[1], 'lead_id', ARGV[7])
  redis.call('SET', KEYS[6], ARGV[1])
end
if ARGV[8] ~= '0' then redis.call('HSET', KEYS[1], 'contact_id', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'chat_id', ARGV[9]) end
if ARGV[10] ~= '0' then redis.call('HSET', KEYS[1], 'talk_id', ARGV[10]) end
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[12]), -1)
if ARGV[11] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
end
return 1
"""

_CLAIM_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[3], m) end
return items
"""

_CLAIM_ONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if score and tonumber(score) <= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Only the holder of this exact lease may drop the item: a newer schedule (a message
# that arrived meanwhile) re-scored it and must survive.
_RELEASE = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_COMMIT_TURN = """
local n = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) < n then return 0 end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'inflight_token', ARGV[2], 'inflight_event', ARGV[3],
  'inflight_since', ARGV[5])
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[8], 'event_id', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('HSET', KEYS[4], 'payload', ARGV[4], 'url', ARGV[10], 'attempts', 0,
  'created_at', ARGV[5], 'conversation_id', ARGV[8])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
if redis.call('ZSCORE', KEYS[6], ARGV[8]) == ARGV[7] then redis.call('ZREM', KEYS[6], ARGV[8]) end
return 1
"""

# A reply settles the turn it answers; pending messages then start the next one.
_FINISH_TURN = """
if redis.call('HGET', KEYS[1], 'inflight_token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'inflight_token', 'inflight_event', 'inflight_since')
end
if redis.call('LLEN', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
end
return 1
"""

_BEGIN_REPLY = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[3])))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return false
"""


@dataclass(frozen=True, slots=True)
class Claim:
    member: str
    lease: int


class DueQueue:
    """A sorted set of work items due at a time, claimed with leases."""

    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self.key = key
        self._claim = redis.register_script(_CLAIM_DUE)
        self._claim_one = redis.register_script(_CLAIM_ONE)
        self._release = redis.register_script(_RELEASE)

    async def schedule(self, member: str, due_ms: int) -> None:
        await self._redis.zadd(self.key, {member: due_ms})

    async def claim(self, limit: int, lease_ms: int) -> list[Claim]:
        now = now_ms()
        lease = now + lease_ms
        items = await self._claim(keys=[self.key], args=[now, limit, lease])
        return [Claim(m.decode(), lease) for m in cast(list[bytes], items)]

    async def claim_member(self, member: str, lease_ms: int) -> Claim | None:
        now = now_ms()
        lease = now + lease_ms
        ok = await self._claim_one(keys=[self.key], args=[now, lease, member])
        return Claim(member, lease) if ok else None

    async def release(self, claim: Claim) -> bool:
        return bool(await self._release(keys=[self.key], args=[claim.lease, claim.member]))

    async def reschedule(self, claim: Claim, due_ms: int) -> None:
        """Move a claimed item to a later time (the lease is then over)."""
        await self._redis.zadd(self.key, {claim.member: due_ms})


class ConversationStore:
    """Typed access to the conversation service's Redis state."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.turns = DueQueue(redis, TURNS_DUE)
        self.outbox = DueQueue(redis, OUTBOX_DUE)
        self.replies = DueQueue(redis, REPLIES_DUE)
        self._ingest = redis.register_script(_INGEST)
        self._apply = redis.register_script(_APPLY_MESSAGE)
        self._commit_turn = redis.register_script(_COMMIT_TURN)
        self._finish_turn = redis.register_script(_FINISH_TURN)
        self._begin_reply = redis.register_script(_BEGIN_REPLY)

    async def ingest(self, webhooks: int, events: list[tuple[str, str]]) -> list[bool]:
        """Store (dedupe key, payload) events of `webhooks` bodies; True for each new one.

        One round trip for a whole batch of webhooks: this is the ack path.
        """
        args: list[str | int] = [SEEN_TTL_SECONDS, f"{time.time():.3f}", webhooks]
        for key, payload in events:
            args.extend((key, payload))
        result = await self._ingest(keys=[EVENTS_STREAM, WEBHOOKS_LAST, WEBHOOKS_TOTAL], args=args)
        return [bool(x) for x in cast(list[int], result)]

    async def webhook_status(self) -> tuple[float, int]:
        last, total = await self.redis.mget(WEBHOOKS_LAST, WEBHOOKS_TOTAL)
        return float(last or 0), int(total or 0)

    async def apply_message(
        self,
        *,
        conversation_id: str,
        message_id: str,
        inbox_entry: str,
        history_entry: str,
        at_ms: int,
        due_ms: int,
        lead_id: int,
        contact_id: int,
        chat_id: str,
        talk_id: int,
        to_inbox: bool,
        history_max: int,
    ) -> bool:
        applied = await self._apply(
            keys=[
                conversation_key(conversation_id),
                applied_key(conversation_id),
                inbox_key(conversation_id),
                history_key(conversation_id),
                TURNS_DUE,
                by_lead_key(lead_id),
            ],
            args=[
                conversation_id,
                message_id,
                inbox_entry,
                history_entry,
                at_ms,
                due_ms,
                lead_id,
                contact_id,
                chat_id,
                talk_id,
                "1" if to_inbox else "0",
                max(history_max, 1),
                SEEN_TTL_SECONDS,
            ],
        )
        return bool(applied)

    async def conversation(self, conversation_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(conversation_key(conversation_id))
        return text_map(raw)

    async def conversation_by_lead(self, lead_id: int) -> str | None:
        value = await self.redis.get(by_lead_key(lead_id))
        return text(value) if value else None

    async def inbox(self, conversation_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(inbox_key(conversation_id), 0, -1)
        return [json.loads(x) for x in raw]

    async def history(self, conversation_id: str, turns: int) -> list[dict[str, Any]]:
        if turns <= 0:
            return []
        raw = await self.redis.lrange(history_key(conversation_id), -turns, -1)
        return [json.loads(x) for x in raw]

    async def append_history(self, conversation_id: str, entry: dict[str, Any], cap: int) -> None:
        key = history_key(conversation_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(entry, ensure_ascii=False))
            pipe.ltrim(key, -max(cap, 1), -1)
            await pipe.execute()

    async def remember_sent(self, conversation_id: str, text_hash: str) -> None:
        key = sent_key(conversation_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, text_hash)
            pipe.expire(key, SENT_TTL_SECONDS)
            await pipe.execute()

    async def was_sent_by_bridge(self, conversation_id: str, text_hash: str) -> bool:
        return bool(await self.redis.sismember(sent_key(conversation_id), text_hash))

    async def clear_inbox(self, conversation_id: str, count: int) -> None:
        await self.redis.ltrim(inbox_key(conversation_id), count, -1)

    async def commit_turn(
        self,
        *,
        conversation_id: str,
        claim: Claim,
        consumed: int,
        reply_token: str,
        event_id: str,
        payload: str,
        url: str,
        outbox_lease_ms: int,
    ) -> bool:
        now = now_ms()
        ok = await self._commit_turn(
            keys=[
                inbox_key(conversation_id),
                conversation_key(conversation_id),
                reply_token_key(reply_token),
                outbox_item_key(event_id),
                OUTBOX_DUE,
                TURNS_DUE,
            ],
            args=[
                consumed,
                reply_token,
                event_id,
                payload,
                now,
                now + outbox_lease_ms,
                claim.lease,
                conversation_id,
                REPLY_TOKEN_TTL_SECONDS,
                url,
            ],
        )
        return bool(ok)

    async def finish_turn(self, conversation_id: str, reply_token: str) -> None:
        await self._finish_turn(
            keys=[conversation_key(conversation_id), inbox_key(conversation_id), TURNS_DUE],
            args=[reply_token, now_ms(), conversation_id],
        )

    async def reply_token(self, token: str) -> dict[str, str]:
        raw = await self.redis.hgetall(reply_token_key(token))
        return text_map(raw)

    async def outbox_item(self, event_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(outbox_item_key(event_id))
        return text_map(raw)

    async def outbox_delivered(self, claim: Claim) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(OUTBOX_DUE, claim.member)
            pipe.delete(outbox_item_key(claim.member))
            await pipe.execute()

    async def outbox_failed(self, claim: Claim, error: str, next_due_ms: int | None) -> None:
        """Record a failed attempt; `next_due_ms` None parks the item as a dead letter."""
        key = outbox_item_key(claim.member)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(key, "last_error", error[:500])
            if next_due_ms is None:
                pipe.zrem(OUTBOX_DUE, claim.member)
                pipe.zadd(OUTBOX_DEAD, {claim.member: now_ms()})
            else:
                pipe.zadd(OUTBOX_DUE, {claim.member: next_due_ms})
            await pipe.execute()

    async def begin_reply(
        self, idempotency_key: str, job_id: str, job: dict[str, str], lease_ms: int
    ) -> str | None:
        """Store a reply job unless the key was seen; returns the existing job id if so."""
        flat: list[str] = []
        for field, value in job.items():
            flat.extend((field, value))
        existing = await self._begin_reply(
            keys=[reply_idempotency_key(idempotency_key), reply_job_key(job_id), REPLIES_DUE],
            args=[job_id, REPLY_TOKEN_TTL_SECONDS, json.dumps(flat), now_ms() + lease_ms],
        )
        return cast(bytes, existing).decode() if existing else None

    async def reply_job(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(reply_job_key(job_id))
        return text_map(raw)

    async def update_reply_job(self, job_id: str, **fields: str | int | float) -> None:
        await self.redis.hset(reply_job_key(job_id), mapping=cast(Any, fields))

    async def reply_failed(self, job_id: str, error: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(REPLIES_DUE, job_id)
            pipe.hset(reply_job_key(job_id), mapping={"state": "failed", "error": error[:500]})
            await pipe.execute()

    async def reply_done(self, claim: Claim) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(REPLIES_DUE, claim.member)
            pipe.hset(reply_job_key(claim.member), "state", "delivered")
            pipe.expire(reply_job_key(claim.member), REPLY_TOKEN_TTL_SECONDS)
            await pipe.execute()
