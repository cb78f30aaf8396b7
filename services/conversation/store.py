"""Every Redis key of the conversation service, with its lifetime and why, and the
Lua scripts that keep multi-key changes atomic.

Turns, the n8n outbox, replies, resumes, handoffs and notifications are due queues
(services/common/due_queue.py).
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, DueQueue, now_ms, text, text_map
from services.conversation import series

EVENTS_STREAM = "conv:events"  # webhook events, durable until a worker has applied them
WORKERS_GROUP = "workers"
# Work that failed, of every kind (events, turns, deliveries...): `conv:work:failing`
# while it is retried, `conv:work:dead` (+ `:info`) once parked; kept until replayed or
# until the item goes through (due_queue.WorkFailures).
WORK_FAILURES = "conv:work"
WEBHOOKS_LAST = "conv:webhooks:last"
WEBHOOKS_TOTAL = "conv:webhooks:total"
TURNS_DUE = "conv:turns:due"
OUTBOX_DUE = "conv:outbox:due"
OUTBOX_DEAD = "conv:outbox:dead"  # event_id → parked at (ms); the item hash stays
REPLIES_DUE = "conv:replies:due"
RESUMES_DUE = "conv:resumes:due"  # paused conversations by the time they resume
HANDOFFS_DUE = "conv:handoffs:due"  # turns by the time n8n's silence hands them off
NOTIFY_DUE = "conv:notify:due"  # notes and tasks for Kommo, retried until written
CONVERSATIONS = "conv:index"  # every conversation by last activity (ms), for listings
PROACTIVE_DUE = "conv:proactive:due"  # proactive starts waiting for working hours
FALLBACKS_DUE = "conv:proactive:fallback-due"  # n8n's first message, or the template
TEMPLATES = "conv:templates"  # trigger → template, set through the API
STATS = "conv:stats"  # counters (HINCRBY), kept for the life of the data
# conv:series:{unix start}: the same counters per five minutes (series.py), for a day,
# with each bucket's reply latency histogram: the one source of every latency figure.
BOT_LOG_KEPT = 50

# Kommo retries a delivery for a while: a duplicate is recognised for at least 72 h.
SEEN_TTL_SECONDS = 72 * 3600
# A reply token must outlive the longest n8n retry schedule (1 h) with margin.
REPLY_TOKEN_TTL_SECONDS = 7 * 24 * 3600
# A delivered envelope is kept for a resend until its reply comes, at most this long.
DELIVERED_KEPT_SECONDS = 24 * 3600
# The bridge's own sends are recognised in their echo for this long.
SENT_TTL_SECONDS = 24 * 3600


def seen_key(message_id: str) -> str:
    return f"conv:seen:{message_id}"


def conversation_key(conversation_id: str) -> str:
    return f"conv:c:{conversation_id}"


def by_contact_key(contact_id: int) -> str:
    return f"conv:by-contact:{contact_id}"


def bot_log_key(conversation_id: str) -> str:
    """The bot's state changes of a conversation, newest last, capped."""
    return f"conv:c:{conversation_id}:bot-log"


def proactive_key(lead_id: int, trigger: str) -> str:
    """A lead gets a trigger's first message once within PROACTIVE_DEDUPE_SECONDS."""
    return f"conv:proactive:{lead_id}:{trigger}"


def proactive_job_key(job_id: str) -> str:
    return f"conv:proactive-job:{job_id}"


def notify_key(job_id: str) -> str:
    return f"conv:notify:{job_id}"


def by_lead_key(lead_id: int) -> str:
    return f"conv:by-lead:{lead_id}"


def by_chat_key(chat_id: str) -> str:
    """The conversation that first used a Kommo chat; other leads in it keep their own."""
    return f"conv:by-chat:{chat_id}"


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

# A conversation is its lead's: a message of another lead never joins it nor changes its
# lead id (-1: the caller applies it to that lead's own conversation). A chat shared by
# conversations keeps pointing at its first one; 2 says so the first time, for one warning.
# An empty history entry (the echo of the bridge's own send) is applied but not recorded.
_APPLY_MESSAGE = """
local lead = redis.call('HGET', KEYS[1], 'lead_id')
if ARGV[7] ~= '0' and lead and lead ~= '0' and lead ~= ARGV[7] then return -1 end
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
if ARGV[8] ~= '0' then
  redis.call('HSET', KEYS[1], 'contact_id', ARGV[8])
  redis.call('SET', KEYS[8], ARGV[1])
end
redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
local outcome = 1
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'chat_id', ARGV[9])
  local owner = redis.call('GET', KEYS[9])
  if not owner then
    redis.call('SET', KEYS[9], ARGV[1])
  elseif owner ~= ARGV[1] and redis.call('HSETNX', KEYS[1], 'shared_chat_with', owner) == 1 then
    outcome = 2
  end
end
if ARGV[10] ~= '0' then redis.call('HSET', KEYS[1], 'talk_id', ARGV[10]) end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[4])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[12]), -1)
end
if ARGV[11] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
end
return outcome
"""

_COMMIT_TURN = """
local n = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) < n then return 0 end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'inflight_token', ARGV[2], 'inflight_event', ARGV[3],
  'inflight_since', ARGV[5])
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[8], 'event_id', ARGV[3],
  'request_id', ARGV[13])
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('HSET', KEYS[4], 'payload', ARGV[4], 'url', ARGV[10], 'attempts', 0,
  'created_at', ARGV[5], 'conversation_id', ARGV[8], 'request_id', ARGV[13])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
if redis.call('ZSCORE', KEYS[6], ARGV[8]) == ARGV[7] then redis.call('ZREM', KEYS[6], ARGV[8]) end
redis.call('HSET', KEYS[2], 'turn_started', ARGV[12])
if ARGV[11] ~= '0' then redis.call('ZADD', KEYS[7], ARGV[11], ARGV[8]) end
return 1
"""

# A reply settles the turn it answers (and its envelope, kept for a resend, can go);
# pending messages then start the next one.
_FINISH_TURN = """
if redis.call('HGET', KEYS[1], 'inflight_token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'inflight_token', 'inflight_event', 'inflight_since')
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[5])
end
if redis.call('LLEN', KEYS[2]) > 0 then
  if redis.call('HEXISTS', KEYS[1], 'inflight_token') == 0
      and redis.call('HDEL', KEYS[1], 'turn_waiting') == 1 then
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  else
    redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
  end
end
return 1
"""

# A turn found the previous one still at n8n: it waits for that reply (finish_turn then
# makes it due at once), at most until `later` (0 = no limit). Atomic with finish_turn,
# so a reply settling in between is never missed: the turn is then due now.
_DEFER_TURN = """
if redis.call('HEXISTS', KEYS[1], 'inflight_token') == 1 then
  redis.call('HSET', KEYS[1], 'turn_waiting', 1)
  if ARGV[2] ~= '0' then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  else
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 0
"""

# Only an envelope n8n has taken (delivered_at) and that is not queued already.
_RESEND = """
if redis.call('HEXISTS', KEYS[1], 'delivered_at') == 0 then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[1], 'delivered_at')
redis.call('HINCRBY', KEYS[1], 'resends', 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
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


class Applied(enum.IntEnum):
    """What applying a message to a conversation did."""

    DUPLICATE = 0  # applied before (at-least-once delivery)
    APPLIED = 1
    SHARED_CHAT = 2  # applied; its chat is first seen under another conversation
    OTHER_LEAD = -1  # not applied: the conversation belongs to another lead


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
        self._defer_turn = redis.register_script(_DEFER_TURN)
        self._begin_reply = redis.register_script(_BEGIN_REPLY)
        self._resend = redis.register_script(_RESEND)

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
    ) -> Applied:
        """Record a message in its conversation once; `history_entry` '' keeps it out of
        the history."""
        applied = await self._apply(
            keys=[
                conversation_key(conversation_id),
                applied_key(conversation_id),
                inbox_key(conversation_id),
                history_key(conversation_id),
                TURNS_DUE,
                by_lead_key(lead_id),
                CONVERSATIONS,
                by_contact_key(contact_id),
                by_chat_key(chat_id),
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
        return Applied(int(cast(int, applied)))

    async def conversation(self, conversation_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(conversation_key(conversation_id))
        return text_map(raw)

    async def conversation_by_contact(self, contact_id: int) -> str | None:
        value = await self.redis.get(by_contact_key(contact_id))
        return text(value) if value else None

    async def clear_inflight(self, conversation_id: str) -> None:
        """The turn in flight is settled without a reply (handed off)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(
                conversation_key(conversation_id),
                "inflight_token",
                "inflight_event",
                "inflight_since",
            )
            pipe.zrem(HANDOFFS_DUE, conversation_id)
            await pipe.execute()

    async def conversation_by_lead(self, lead_id: int) -> str | None:
        value = await self.redis.get(by_lead_key(lead_id))
        return text(value) if value else None

    async def conversation_by_chat(self, chat_id: str) -> str | None:
        value = await self.redis.get(by_chat_key(chat_id))
        return text(value) if value else None

    async def inbox(self, conversation_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(inbox_key(conversation_id), 0, -1)
        return [json.loads(x) for x in raw]

    async def history(self, conversation_id: str, turns: int) -> list[dict[str, Any]]:
        if turns <= 0:
            return []
        raw = await self.redis.lrange(history_key(conversation_id), -turns, -1)
        return [json.loads(x) for x in raw]

    async def reply_delivered(
        self, job_id: str, conversation_id: str, entry: dict[str, Any], cap: int
    ) -> None:
        """Kommo took the reply: mark the job and add the text to the history together, so
        a retry after a crash neither sends it again nor records it twice."""
        key = history_key(conversation_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(reply_job_key(job_id), "delivered", 1)
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
        request_id: str = "",
        conversation_id: str,
        claim: Claim,
        consumed: int,
        reply_token: str,
        event_id: str,
        payload: str,
        url: str,
        outbox_lease_ms: int,
        check_after_ms: int,
        turn_started_ms: int,
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
                HANDOFFS_DUE,
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
                now + check_after_ms if check_after_ms else 0,
                turn_started_ms,
                request_id,
            ],
        )
        return bool(ok)

    async def finish_turn(self, conversation_id: str, reply_token: str, event_id: str = "") -> None:
        """Settle the turn `reply_token` answers; `event_id` is its envelope's."""
        await self._finish_turn(
            keys=[
                conversation_key(conversation_id),
                inbox_key(conversation_id),
                TURNS_DUE,
                HANDOFFS_DUE,
                outbox_item_key(event_id),
            ],
            args=[reply_token, now_ms(), conversation_id],
        )

    async def defer_turn(self, conversation_id: str, later_ms: int) -> bool:
        """Wait for the turn at n8n to be settled; False if it was meanwhile (the turn
        is then due now)."""
        waiting = await self._defer_turn(
            keys=[conversation_key(conversation_id), TURNS_DUE],
            args=[conversation_id, later_ms, now_ms()],
        )
        return bool(waiting)

    async def reply_token(self, token: str) -> dict[str, str]:
        raw = await self.redis.hgetall(reply_token_key(token))
        return text_map(raw)

    async def outbox_item(self, event_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(outbox_item_key(event_id))
        return text_map(raw)

    async def outbox_delivered(self, claim: Claim) -> None:
        """n8n took it. The item stays while its reply may still come, so the envelope
        can be sent again if that reply never arrives (`resend`)."""
        key = outbox_item_key(claim.member)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(OUTBOX_DUE, claim.member)
            pipe.hset(key, mapping={"delivered_at": now_ms(), "attempts": 0})
            pipe.expire(key, DELIVERED_KEPT_SECONDS)
            await pipe.execute()

    async def resend(self, event_id: str) -> bool:
        """Send a delivered envelope to n8n again (its reply never came); False when the
        envelope is gone or already on its way."""
        return bool(await self._resend(keys=[outbox_item_key(event_id), OUTBOX_DUE], args=[
            event_id, now_ms()
        ]))  # fmt: skip

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

    async def reply_for_key(self, key: str) -> str | None:
        value = await self.redis.get(reply_idempotency_key(key))
        return text(value) if value else None

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


class Operations:
    """What operators read and do: listings, debugging, reset, dead letters."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def conversation_ids(self, limit: int = 10_000) -> list[str]:
        raw = await self.redis.zrevrange(CONVERSATIONS, 0, limit - 1)
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
        """Forget these conversations (their state, indexes and scheduled work);
        returns how many conversations and keys were deleted."""
        deleted = keys_deleted = 0
        for conversation_id in ids:
            state = text_map(await self.redis.hgetall(conversation_key(conversation_id)))
            chat_owned = (
                bool(state.get("chat_id"))
                and (await self.redis.get(by_chat_key(state["chat_id"])))
                == conversation_id.encode()
            )
            keys = [
                conversation_key(conversation_id),
                inbox_key(conversation_id),
                history_key(conversation_id),
                applied_key(conversation_id),
                sent_key(conversation_id),
                bot_log_key(conversation_id),
            ]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*keys)
                if state.get("lead_id"):
                    pipe.delete(by_lead_key(int(state["lead_id"])))
                if state.get("contact_id"):
                    pipe.delete(by_contact_key(int(state["contact_id"])))
                if chat_owned:
                    pipe.delete(by_chat_key(state["chat_id"]))
                for due in (TURNS_DUE, RESUMES_DUE, HANDOFFS_DUE, CONVERSATIONS):
                    pipe.zrem(due, conversation_id)
                results = await pipe.execute()
            keys_deleted += int(results[0])
            deleted += 1 if results[0] else 0
        return deleted, keys_deleted

    async def dead_letters(self, limit: int) -> list[tuple[str, float, dict[str, str]]]:
        entries = await self.redis.zrevrange(OUTBOX_DEAD, 0, limit - 1, withscores=True)
        out = []
        for member, score in cast(list[tuple[bytes, float]], entries):
            event_id = text(member)
            item = text_map(await self.redis.hgetall(outbox_item_key(event_id)))
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


class BotStore:
    """The bot's state per conversation, its history, and the Kommo notifications."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.resumes = DueQueue(redis, RESUMES_DUE)
        self.handoffs = DueQueue(redis, HANDOFFS_DUE)
        self.notifications = DueQueue(redis, NOTIFY_DUE)

    async def set_state(
        self,
        conversation_id: str,
        state: str,
        by: str,
        reason: str,
        resumes_at_ms: int,
    ) -> str:
        """Set the bot's state; returns the state it had before."""
        key = conversation_key(conversation_id)
        now = now_ms()
        previous = await self.redis.hget(key, "bot_state")
        entry = json.dumps({"state": state, "by": by, "reason": reason, "at": now / 1000})
        async with self.redis.pipeline(transaction=True) as pipe:
            if state == "paused":
                pipe.hset(
                    key,
                    mapping={
                        "bot_state": state,
                        "paused_by": by,
                        "paused_reason": reason,
                        "paused_at": now,
                        "resumes_at": resumes_at_ms,
                    },
                )
                if resumes_at_ms:
                    pipe.zadd(RESUMES_DUE, {conversation_id: resumes_at_ms})
                else:
                    pipe.zrem(RESUMES_DUE, conversation_id)
            else:
                pipe.hset(key, "bot_state", state)
                pipe.hdel(key, "paused_by", "paused_reason", "paused_at", "resumes_at")
                pipe.zrem(RESUMES_DUE, conversation_id)
            pipe.rpush(bot_log_key(conversation_id), entry)
            pipe.ltrim(bot_log_key(conversation_id), -BOT_LOG_KEPT, -1)
            await pipe.execute()
        return text(previous) if previous else "active"

    async def push_resume(self, conversation_id: str, resumes_at_ms: int) -> None:
        """A person wrote again: the quiet period starts over."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(conversation_key(conversation_id), "resumes_at", resumes_at_ms)
            pipe.zadd(RESUMES_DUE, {conversation_id: resumes_at_ms})
            await pipe.execute()

    async def log(self, conversation_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(bot_log_key(conversation_id), 0, -1)
        return [json.loads(x) for x in raw]

    async def count(self, counter: str, n: int = 1) -> None:
        """A counter for the life of the data, and the same in the current time bucket."""
        key = series.bucket_key(series.bucket_start(time.time()))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(STATS, counter, n)
            pipe.hincrby(key, counter, n)
            pipe.expire(key, series.KEPT_SECONDS)
            await pipe.execute()

    async def counters(self) -> dict[str, int]:
        raw = await self.redis.hgetall(STATS)
        return {text(k): int(v) for k, v in raw.items()}

    async def record_reply_seconds(self, seconds: float) -> None:
        key = series.bucket_key(series.bucket_start(time.time()))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, series.REPLIES, 1)
            pipe.hincrby(key, series.REPLY_MS_SUM, round(seconds * 1000))
            pipe.hincrby(key, series.latency_field(seconds), 1)
            pipe.expire(key, series.KEPT_SECONDS)
            await pipe.execute()

    async def time_series(self, hours: int) -> series.Series:
        """The counters and reply latencies of the last `hours` (at most a day), in time
        buckets, read once."""
        starts = series.bucket_starts(time.time(), hours)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(series.bucket_key(start))
            raws = await pipe.execute()
        counts = [{text(k): int(v) for k, v in raw.items()} for raw in raws]
        return series.Series(starts, counts)

    async def add_notification(self, job_id: str, job: dict[str, str], lease_ms: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(notify_key(job_id), mapping=cast(Any, job))
            pipe.expire(notify_key(job_id), REPLY_TOKEN_TTL_SECONDS)
            pipe.zadd(NOTIFY_DUE, {job_id: now_ms() + lease_ms})
            await pipe.execute()

    async def notification(self, job_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(notify_key(job_id)))

    async def mark_noted(self, job_id: str) -> None:
        await self.redis.hset(notify_key(job_id), "noted", "1")

    async def notification_done(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(NOTIFY_DUE, job_id)
            pipe.delete(notify_key(job_id))
            await pipe.execute()


class ProactiveStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.waiting = DueQueue(redis, PROACTIVE_DUE)
        self.fallbacks = DueQueue(redis, FALLBACKS_DUE)

    async def claim_start(self, lead_id: int, trigger: str, conversation_id: str, ttl: int) -> bool:
        """True for the first start of this lead and trigger; racing requests lose."""
        return bool(
            await self.redis.set(proactive_key(lead_id, trigger), conversation_id, nx=True, ex=ttl)
        )

    async def forget_start(self, lead_id: int, trigger: str) -> None:
        await self.redis.delete(proactive_key(lead_id, trigger))

    async def ensure_conversation(
        self, conversation_id: str, lead_id: int, contact_id: int
    ) -> dict[str, str]:
        key = conversation_key(conversation_id)
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "id", conversation_id)
            pipe.hsetnx(key, "created_at", now)
            pipe.hsetnx(key, "bot_state", "active")
            pipe.hsetnx(key, "lead_id", lead_id)
            if contact_id:
                pipe.hsetnx(key, "contact_id", contact_id)
                pipe.set(by_contact_key(contact_id), conversation_id, nx=True)
            pipe.hset(key, "updated_at", now)
            pipe.set(by_lead_key(lead_id), conversation_id, nx=True)
            pipe.zadd(CONVERSATIONS, {conversation_id: now})
            pipe.hgetall(key)
            results = await pipe.execute()
        return text_map(results[-1])

    async def add_job(self, queue: DueQueue, job_id: str, job: dict[str, str], due_ms: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(proactive_job_key(job_id), mapping=cast(Any, job))
            pipe.expire(proactive_job_key(job_id), REPLY_TOKEN_TTL_SECONDS)
            pipe.zadd(queue.key, {job_id: due_ms})
            await pipe.execute()

    async def job(self, job_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(proactive_job_key(job_id)))

    async def job_done(self, queue: DueQueue, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue.key, job_id)
            pipe.delete(proactive_job_key(job_id))
            await pipe.execute()

    async def templates(self) -> dict[str, str]:
        return text_map(await self.redis.hgetall(TEMPLATES))

    async def set_template(self, trigger: str, template: str) -> None:
        await self.redis.hset(TEMPLATES, trigger, template)
