"""Every Redis key of the conversation service, with its lifetime and why, and the
Lua scripts that keep multi-key changes atomic.

Turns, the n8n outbox, replies, resumes, handoffs and notifications are due queues
(services/common/due_queue.py).

Partitionable by conversation. Every script works on one conversation's keys, plus
global indexes and queues updated beside them (CONVERSATIONS, the due queues, the
by-lead/by-contact/by-chat pointers, STATS) and the items it owns (its envelope, reply
job, reply token: listed in its key index). None touches the keys of two conversations:
`apply_message` only reads the by-chat pointer to learn that a chat is shared. For a Redis
Cluster, a conversation's keys would carry the hash tag `{conv:<id>}` (items named by
their own ids would take their conversation's tag), and each global index would become
one per partition.

Webhook events are already partitioned: the ingest script XADDs each event to the stream of
its partition, `conv:events:{pN}` with N = crc32 of its routing key (`routing_key`: the
lead, else the chat — the same key the consumer's lanes use) modulo EVENT_PARTITIONS. The
`{pN}` hash tag keeps a partition's stream and its owner lease in one Cluster slot. Each
partition is read by at most one replica at a time, the holder of its lease
(`conv:events:{pN}:owner`, stages/events.PartitionOwnership), so one conversation's events
are applied in order whichever replica reads them. The single stream of earlier versions
(EVENTS_STREAM) is still drained, under a lease of its own, until it is empty.

Personal data has an end (LGPD). With DATA_RETENTION_DAYS (R below; 0 = kept until
erased) every key holding a conversation's data expires R after its last message: each
message (the customer's, a person's, the bot's reply as Kommo takes it) refreshes the TTL
of the conversation's keys in the very script that records it (`touch`), so no key is
ever written without one. Keys written between messages (envelopes, reply jobs, notes
for Kommo, proactive jobs) never outlive their conversation (`life`), and are listed in
its key index so that an erase finds them all (`own`). The conversation listing shows
only conversations within R; the retention sweep (stages/retention.RetentionSweep) erases what
is past it (also data written before R was set), and failure records older than R.
An erase (`Privacy`) removes a lead's or a contact's conversations with every key, queued
work item, failure record and unprocessed webhook event; work already in flight finds
its conversation gone and writes nothing (every write after the first one of a piece of
work is conditional on the conversation, or its item, still existing). Dedupe markers
(`conv:seen:*`) keep their own 72 h: they hold only Kommo's message ids.

Conversations by bot state are counted as states change, never by reading them all:
every script that creates a conversation, changes its bot state or its turn at n8n, or
deletes it ends with `recount(id)`, which files the conversation in BOT_STATES by what its
hash now says. `ConversationStore.state_counts` counts them there in one round trip.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, DueQueue, Failure, now_ms, text, text_map
from services.common.errors import Conflict, NotFound
from services.conversation import series

# Webhook events, durable until a worker has applied them: applied entries are deleted
# (XDEL), so the streams hold no conversation's messages once they are processed; an
# erase deletes the unprocessed ones of its lead, contact or chat. One stream per
# partition (`event_stream`), each with an owner lease (`event_owner_key`, PX
# WORK_LEASE_SECONDS: a dead owner's partition is taken over once it expires). Every
# replica must run with the same EVENT_PARTITIONS: a changed count sends a conversation to
# another stream, so change it only with the streams drained.
EVENTS_STREAM = "conv:events"  # before partitions: drained, never written any more
WORKERS_GROUP = "workers"
DEFAULT_EVENT_PARTITIONS = 16
# Live conversation replicas (sorted set, consumer → last heartbeat, ms): a replica takes
# ceil(partitions / live) of them. A member unseen for a lease is dropped by the others.
EVENT_REPLICAS = "conv:events:replicas"


def event_stream(partition: int) -> str:
    return f"conv:events:{{p{partition}}}"


def event_streams(partitions: int) -> list[str]:
    """Every event stream, the one of earlier versions last."""
    return [event_stream(p) for p in range(partitions)] + [EVENTS_STREAM]


def event_owner_key(stream: str) -> str:
    return f"{stream}:owner"


def routing_key(event: dict[str, Any]) -> str:
    """Events with the same key are applied in stream order: a conversation's lead, or
    its chat while the message has no lead yet."""
    if event.get("lead_id"):
        return f"lead:{event['lead_id']}"
    return f"chat:{event.get('chat_id', '')}"


def event_partition(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


# Work that failed, of every kind (events, turns, deliveries...): `conv:work:failing`
# while it is retried, `conv:work:dead` (+ `:info`) once parked; kept until replayed or
# until the item goes through (due_queue.WorkFailures). Records name their conversation
# (and an event's record holds the event): erased with it, and dropped by the retention
# sweep once older than R.
WORK_FAILURES = "conv:work"
WEBHOOKS_LAST = "conv:webhooks:last"
WEBHOOKS_TOTAL = "conv:webhooks:total"
# Due queues (sorted sets, no TTL: they live with the service). Their members are ids:
# a conversation's are removed by its erase (and by the sweep once it is past R); a
# worker that claims a member whose item is gone releases it.
TURNS_DUE = "conv:turns:due"
OUTBOX_DUE = "conv:outbox:due"
OUTBOX_DEAD = "conv:outbox:dead"  # event_id → parked at (ms); the item hash stays
# Set when a POST to n8n failed and will be retried; the first POST that goes through
# takes it (GETDEL) and pulls every envelope waiting for a retry forward: n8n is back.
# Expires with the longest wait of the retry schedule (nothing is waiting after that).
N8N_FAILING = "conv:n8n:failing"
REPLIES_DUE = "conv:replies:due"
RESUMES_DUE = "conv:resumes:due"  # paused conversations by the time they resume
HANDOFFS_DUE = "conv:handoffs:due"  # turns by the time n8n's silence hands them off
NOTIFY_DUE = "conv:notify:due"  # notes and tasks for Kommo, retried until written
# Every conversation by last activity (ms), for listings. No TTL (it lists them all):
# listings read only the members within R, the sweep erases the older ones.
CONVERSATIONS = "conv:index"
PROACTIVE_DUE = "conv:proactive:due"  # proactive starts waiting for working hours
FALLBACKS_DUE = "conv:proactive:fallback-due"  # n8n's first message, or the template
TEMPLATES = "conv:templates"  # trigger → template, set through the API
# The bot rules set through the API (hash: json, version, updated_at). No TTL: it is
# configuration. Every replica reads it again at most BOT_RULES_REFRESH_SECONDS after a
# change (rulebook.py).
BOT_RULES = "conv:bot-rules"
STATS = "conv:stats"  # counters (HINCRBY), kept for the life of the data
# Every conversation by its bot state, for counting (ZCOUNT by score, O(log n)): score
# BOT_STATE_PAUSED if paused (else 0) + BOT_STATE_AWAITING if its turn is at n8n. Kept by
# `recount` in the scripts that change either, so it can never disagree with the
# conversations for long. No TTL (like CONVERSATIONS): a member goes when its conversation
# is erased, reset or swept. A conversation whose keys expired (retention) stays counted
# until the sweep erases it: the counts may run ahead of the listing by the conversations
# that expired within the last DATA_RETENTION_SWEEP_SECONDS, never more.
BOT_STATES = "conv:bot-states"
BOT_STATE_AWAITING, BOT_STATE_PAUSED = 1, 2
# Set once every conversation is filed (data from before BOT_STATES is filed once, by
# `recount_states`); one replica files them at a time, under the lock.
BOT_STATES_SINCE = "conv:bot-states:since"
BOT_STATES_RECOUNT_LOCK = "conv:bot-states:recount"
_RECOUNT_LOCK_MS = 60_000
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
# Notes and tasks for Kommo, and proactive jobs: retried for at most this long.
JOB_KEPT_SECONDS = 7 * 24 * 3600

# Every key below except the dedupe markers holds a conversation's data: it expires with
# the conversation (R after its last message; sooner where its own lifetime is shorter)
# and goes with its erase.
CONVERSATION_PREFIX = "conv:c:"
BY_LEAD_PREFIX = "conv:by-lead:"
BY_CONTACT_PREFIX = "conv:by-contact:"
BY_CHAT_PREFIX = "conv:by-chat:"
OUTBOX_PREFIX = "conv:outbox:"
REPLY_JOB_PREFIX = "conv:reply-job:"
REPLY_KEY_PREFIX = "conv:reply-key:"
REPLY_TOKEN_PREFIX = "conv:reply-token:"  # noqa: S105  # a key prefix, not a secret
NOTIFY_PREFIX = "conv:notify:"
PROACTIVE_JOB_PREFIX = "conv:proactive-job:"


def seen_key(message_id: str) -> str:
    """A dedupe marker (72 h, SEEN_TTL_SECONDS): only Kommo's message id, no personal
    data, so retention and erase leave it alone."""
    return f"conv:seen:{message_id}"


def conversation_key(conversation_id: str) -> str:
    """The conversation (hash: lead, contact, chat, bot state, the turn in flight). R."""
    return f"{CONVERSATION_PREFIX}{conversation_id}"


def by_contact_key(contact_id: int) -> str:
    """A contact's latest conversation. R, refreshed by the conversation's messages."""
    return f"{BY_CONTACT_PREFIX}{contact_id}"


def bot_log_key(conversation_id: str) -> str:
    """The bot's state changes of a conversation, newest last, capped. The conversation's
    lifetime (it names people of the team and their reasons)."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:bot-log"


def keys_index_key(conversation_id: str) -> str:
    """The keys holding this conversation's data that are not named by its id (envelopes,
    reply jobs, tokens, notes, proactive jobs and dedupe): sorted set key → expires at
    (ms), pruned as they expire, so that an erase finds them. R, refreshed by messages."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:keys"


def proactive_key(lead_id: int, trigger: str) -> str:
    """A lead gets a trigger's first message once within PROACTIVE_DEDUPE_SECONDS (at
    most R: it records that the lead was contacted). In the key index."""
    return f"conv:proactive:{lead_id}:{trigger}"


def proactive_job_key(job_id: str) -> str:
    """A proactive start waiting for working hours, or n8n's first message (with the
    template rendered with the contact's name). JOB_KEPT_SECONDS, at most the
    conversation's lifetime. In the key index."""
    return f"{PROACTIVE_JOB_PREFIX}{job_id}"


def notify_key(job_id: str) -> str:
    """A note or task for Kommo about a lead. JOB_KEPT_SECONDS, at most the
    conversation's lifetime; deleted once Kommo has it. In the key index."""
    return f"{NOTIFY_PREFIX}{job_id}"


def by_lead_key(lead_id: int) -> str:
    """A lead's conversation. R, refreshed by the conversation's messages."""
    return f"{BY_LEAD_PREFIX}{lead_id}"


def by_chat_key(chat_id: str) -> str:
    """The conversation that first used a Kommo chat; other leads in it keep their own.
    R, refreshed by the messages of the conversation it points to."""
    return f"{BY_CHAT_PREFIX}{chat_id}"


def inbox_key(conversation_id: str) -> str:
    """Customer messages waiting for the next turn. R."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:inbox"


def history_key(conversation_id: str) -> str:
    """What was said, capped, for n8n's context. R."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:history"


def applied_key(conversation_id: str) -> str:
    """Message ids already applied (at-least-once delivery must apply each once).
    SEEN_TTL_SECONDS like the dedupe markers, at most R."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:applied"


def sent_key(conversation_id: str) -> str:
    """Fingerprints of the texts the bridge sent, to recognise their echo.
    SENT_TTL_SECONDS, at most the conversation's lifetime."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:sent"


def reply_token_key(token: str) -> str:
    """The turn a reply token answers. REPLY_TOKEN_TTL_SECONDS, at most R. In the key
    index."""
    return f"{REPLY_TOKEN_PREFIX}{token}"


def outbox_item_key(event_id: str) -> str:
    """An envelope for n8n (the whole payload): until delivered, then
    DELIVERED_KEPT_SECONDS for a resend; a dead letter until replayed; always at most
    the conversation's lifetime. In the key index."""
    return f"{OUTBOX_PREFIX}{event_id}"


def reply_job_key(job_id: str) -> str:
    """A reply to deliver (its text): until delivered, then REPLY_TOKEN_TTL_SECONDS;
    always at most the conversation's lifetime. In the key index."""
    return f"{REPLY_JOB_PREFIX}{job_id}"


def reply_idempotency_key(key: str) -> str:
    """A reply's idempotency key → its job. REPLY_TOKEN_TTL_SECONDS, at most the
    conversation's lifetime. In the key index."""
    return f"{REPLY_KEY_PREFIX}{key}"


# Lua shared by the scripts that write a conversation's data. R is the retention in ms
# (0 = kept until erased).
#   life(own, conv, R): how long a key of conversation `conv` may live — its own
#     lifetime (0 = none), never past R nor past the conversation itself;
#   own(conv, key, ms, now, R): list `key` in the conversation's key index;
#   touch(id, now, R): a message — the conversation's keys live R from now;
#   recount(id): the conversation is filed in BOT_STATES by what its hash says now (or
#     taken out, when it is gone): the last step of every script that creates one,
#     changes its bot state or its turn at n8n, or deletes it.
_LIB = (
    """
local function life(own_ms, conv, R)
  if R <= 0 then return own_ms end
  local ms = R
  if own_ms > 0 and own_ms < ms then ms = own_ms end
  local left = redis.call('PTTL', conv)
  if left > 0 and left < ms then ms = left end
  return ms
end
local function expire(key, ms)
  if ms > 0 then redis.call('PEXPIRE', key, ms) end
end
local function own(conv, key, ms, now, R)
  local index = conv .. ':keys'
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  if ms > 0 then
    redis.call('ZADD', index, now + ms, key)
  else
    redis.call('ZADD', index, '+inf', key)
  end
  if R > 0 and redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, ms) end
end
local function touch(id, now, R)
  local c = '@CONV@' .. id
  redis.call('ZADD', '@INDEX@', now, id)
  if R <= 0 then return end
  for _, k in ipairs({c, c .. ':inbox', c .. ':history', c .. ':bot-log', c .. ':keys'}) do
    redis.call('PEXPIRE', k, R)
  end
  local f = redis.call('HMGET', c, 'lead_id', 'contact_id', 'chat_id')
  if f[1] and f[1] ~= '0' then redis.call('PEXPIRE', '@LEAD@' .. f[1], R) end
  if f[2] and f[2] ~= '0' then redis.call('PEXPIRE', '@CONTACT@' .. f[2], R) end
  if f[3] and f[3] ~= '' and redis.call('GET', '@CHAT@' .. f[3]) == id then
    redis.call('PEXPIRE', '@CHAT@' .. f[3], R)
  end
end
local function recount(id)
  local c = '@CONV@' .. id
  if redis.call('EXISTS', c) == 0 then
    redis.call('ZREM', '@STATES@', id)
    return
  end
  local f = redis.call('HMGET', c, 'bot_state', 'inflight_token')
  local score = 0
  if f[1] == 'paused' then score = @PAUSED@ end
  if f[2] then score = score + @AWAITING@ end
  redis.call('ZADD', '@STATES@', score, id)
end
""".replace("@CONV@", CONVERSATION_PREFIX)
    .replace("@STATES@", BOT_STATES)
    .replace("@PAUSED@", str(BOT_STATE_PAUSED))
    .replace("@AWAITING@", str(BOT_STATE_AWAITING))
    .replace("@INDEX@", CONVERSATIONS)
    .replace("@LEAD@", BY_LEAD_PREFIX)
    .replace("@CONTACT@", BY_CONTACT_PREFIX)
    .replace("@CHAT@", BY_CHAT_PREFIX)
)


# Dedupe then append, in that order: a failure half-way leaves a possible duplicate
# (absorbed by the applied-set of the worker), never a message marked seen but lost.
# KEYS: last webhook at, webhook count, then the partition streams; ARGV: seen TTL, now,
# webhooks, then (dedupe key, partition index into KEYS from 3, event) per event. One call
# for the batch (the ack path); on a Cluster it would be one call per partition.
_INGEST = """
local out = {}
local first = 6 + 2 * tonumber(ARGV[4])
for i = 6, first - 1, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
end
if first > 6 then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
for i = first, #ARGV, 3 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], '*', 'e', ARGV[i + 2])
    redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
return out
"""

# A conversation is its lead's: a message of another lead never joins it nor changes its
# lead id (-1: the caller applies it to that lead's own conversation). A chat shared by
# conversations keeps pointing at its first one; 2 says so the first time, for one warning.
# An empty history entry (the echo of the bridge's own send) is applied but not recorded.
# An event whose stream entry is gone was erased meanwhile (3): it must not bring its
# conversation back. A replica that no longer holds the stream's lease (KEYS[11], ARGV[16]
# its name) applies nothing (4): the new owner does, in order (a fencing check). Applying
# the same message twice records it once (the applied set, KEYS[2]).
_APPLY_MESSAGE = (
    _LIB
    + """
if ARGV[16] ~= '' and redis.call('GET', KEYS[11]) ~= ARGV[16] then return 4 end
local lead = redis.call('HGET', KEYS[1], 'lead_id')
if ARGV[7] ~= '0' and lead and lead ~= '0' and lead ~= ARGV[7] then return -1 end
if ARGV[14] ~= '' and #redis.call('XRANGE', KEYS[10], ARGV[14], ARGV[14]) == 0 then return 3 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
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
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[17]), -1)
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
end
if ARGV[18] ~= '0' and tonumber(ARGV[18]) > tonumber(redis.call('HGET', KEYS[1], 'customer_at') or '0') then
  redis.call('HSET', KEYS[1], 'customer_at', ARGV[18])
end
if ARGV[19] ~= '' then redis.call('HSET', KEYS[1], 'origin', ARGV[19]) end
if ARGV[18] ~= '0' then
  local kept = redis.call('HGET', KEYS[1], 'kept_reply')
  if kept then
    local at = tonumber(ARGV[5])
    for job in string.gmatch(kept, '[^,]+') do
      redis.call('ZADD', KEYS[12], at, job)
      -- Half a second apart: each is claimed after the one before holds its lead's turn.
      at = at + 500
    end
    redis.call('HDEL', KEYS[1], 'kept_reply')
  end
end
local R = tonumber(ARGV[15])
touch(ARGV[1], tonumber(ARGV[5]), R)
expire(KEYS[2], life(tonumber(ARGV[13]) * 1000, KEYS[1], R))
recount(ARGV[1])
return outcome
"""
)

# A conversation that knew no lead (a chat bound to a contact) gets the lead found
# through its contact: only while it still exists and still has none; the lead's index
# points to it unless the lead already has a conversation of its own.
_BIND_LEAD = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'lead_id') or '0') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'lead_id', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'NX')
touch(ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"""
)

# Only for a conversation that still exists (an erase may have come meanwhile), and only
# if the turn at n8n is still the one the caller saw (ARGV[15], '' for none, '*' for any):
# two turns of one conversation built side by side never both go to n8n.
_COMMIT_TURN = (
    _LIB
    + """
local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('LLEN', KEYS[1]) < n then return 0 end
if ARGV[15] ~= '*' and (redis.call('HGET', KEYS[2], 'inflight_token') or '') ~= ARGV[15] then
  return 0
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'inflight_token', ARGV[2], 'inflight_event', ARGV[3],
  'inflight_since', ARGV[5])
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[8], 'event_id', ARGV[3],
  'request_id', ARGV[13])
if ARGV[16] ~= '' then redis.call('HSET', KEYS[3], 'purpose', ARGV[16]) end
redis.call('HSET', KEYS[4], 'payload', ARGV[4], 'url', ARGV[10], 'attempts', 0,
  'created_at', ARGV[5], 'conversation_id', ARGV[8], 'request_id', ARGV[13])
local R, now = tonumber(ARGV[14]), tonumber(ARGV[5])
touch(ARGV[8], now, R)
local token_ms = life(tonumber(ARGV[9]) * 1000, KEYS[2], R)
expire(KEYS[3], token_ms)
own(KEYS[2], KEYS[3], token_ms, now, R)
local item_ms = life(0, KEYS[2], R)
expire(KEYS[4], item_ms)
own(KEYS[2], KEYS[4], item_ms, now, R)
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
if redis.call('ZSCORE', KEYS[6], ARGV[8]) == ARGV[7] then redis.call('ZREM', KEYS[6], ARGV[8]) end
redis.call('HSET', KEYS[2], 'turn_started', ARGV[12])
if ARGV[11] ~= '0' then redis.call('ZADD', KEYS[7], ARGV[11], ARGV[8]) end
recount(ARGV[8])
return 1
"""
)

# A reply settles the turn it answers (and its envelope, kept for a resend, can go);
# pending messages then start the next one.
_FINISH_TURN = (
    _LIB
    + """
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
recount(ARGV[3])
return 1
"""
)

# The turn in flight is settled without a reply (handed off).
_CLEAR_INFLIGHT = (
    _LIB
    + """
redis.call('HDEL', KEYS[1], 'inflight_token', 'inflight_event', 'inflight_since')
redis.call('ZREM', KEYS[2], ARGV[1])
recount(ARGV[1])
return 1
"""
)

# A conversation's count set right by what its hash says (see `recount_states`).
_RECOUNT = (
    _LIB
    + """
recount(ARGV[1])
return 1
"""
)

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

# A reply from n8n is a message of its conversation ('' when that conversation is gone).
_BEGIN_REPLY = (
    _LIB
    + """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
if redis.call('EXISTS', KEYS[4]) == 0 then return '' end
local R, now = tonumber(ARGV[5]), tonumber(ARGV[6])
touch(ARGV[7], now, R)
local key_ms = life(tonumber(ARGV[2]) * 1000, KEYS[4], R)
redis.call('SET', KEYS[1], ARGV[1], 'PX', key_ms)
own(KEYS[4], KEYS[1], key_ms, now, R)
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[3])))
local job_ms = life(0, KEYS[4], R)
expire(KEYS[2], job_ms)
own(KEYS[4], KEYS[2], job_ms, now, R)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return false
"""
)

# Kommo took the bot's reply: a message of its conversation, into the history with the
# job marked, unless the conversation was erased meanwhile.
_REPLY_DELIVERED = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'parts_sent', ARGV[6], 'last_part_at', ARGV[4])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'delivered', 1) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
touch(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""
)

# A line in a conversation's history that no reply job carries (a WhatsApp template the
# bridge sent), only while the conversation exists.
_RECORD_HISTORY = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
touch(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""
)

# A reply that found WhatsApp's window closed waits for the customer: off the due queue,
# named on its conversation beside any other kept there (`kept_reply`, comma-separated job
# ids, in the order they were kept); the customer's next message puts them all back
# (_APPLY_MESSAGE), and the per-lead order of replies sends them in that order.
# If the customer wrote meanwhile (customer_at moved past ARGV[2]), it is due again now.
_KEEP_REPLY = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if (redis.call('HGET', KEYS[3], 'customer_at') or '0') ~= ARGV[2] then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 2
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'waiting_for_customer')
local kept = redis.call('HGET', KEYS[3], 'kept_reply')
if not kept then
  redis.call('HSET', KEYS[3], 'kept_reply', ARGV[1])
elseif not string.find(',' .. kept .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  redis.call('HSET', KEYS[3], 'kept_reply', kept .. ',' .. ARGV[1])
end
return 1
"""

_REMEMBER_SENT = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
expire(KEYS[1], life(tonumber(ARGV[2]), KEYS[2], tonumber(ARGV[3])))
return 1
"""
)

# Fields of a work item, only while it exists: work in flight never recreates an item
# that an erase (or its expiry) removed.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: item, its due queue. ARGV: member, own lifetime (ms), R, then field/value pairs.
# The item is done: off the queue, and kept (if it still exists) at most as long as its
# conversation.
_ITEM_DONE = (
    _LIB
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local conv = '@CONV@' .. (redis.call('HGET', KEYS[1], 'conversation_id') or '')
expire(KEYS[1], life(tonumber(ARGV[2]), conv, tonumber(ARGV[3])))
return 1
""".replace("@CONV@", CONVERSATION_PREFIX)
)

_OUTBOX_FAILED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
"""


class Applied(enum.IntEnum):
    """What applying a message to a conversation did."""

    DUPLICATE = 0  # applied before (at-least-once delivery)
    APPLIED = 1
    SHARED_CHAT = 2  # applied; its chat is first seen under another conversation
    OTHER_LEAD = -1  # not applied: the conversation belongs to another lead
    ERASED = 3  # not applied: its event was erased meanwhile (with its conversation)
    NOT_OWNER = 4  # not applied: this replica lost its partition's lease (fencing)


def retention_ms(retention_seconds: int) -> int:
    return max(retention_seconds, 0) * 1000


class ConversationStore:
    """Typed access to the conversation service's Redis state."""

    def __init__(
        self,
        redis: aioredis.Redis,
        retention_seconds: int = 0,
        event_partitions: int = DEFAULT_EVENT_PARTITIONS,
    ) -> None:
        """`retention_seconds`: DATA_RETENTION_DAYS in seconds (0 = kept until erased)."""
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.event_partitions = event_partitions
        self._partition_streams = [event_stream(p) for p in range(event_partitions)]
        self._r_ms = retention_ms(retention_seconds)
        self.turns = DueQueue(redis, TURNS_DUE)
        self.outbox = DueQueue(redis, OUTBOX_DUE)
        self.replies = DueQueue(redis, REPLIES_DUE)
        self._ingest = redis.register_script(_INGEST)
        self._apply = redis.register_script(_APPLY_MESSAGE)
        self._record_history = redis.register_script(_RECORD_HISTORY)
        self._keep_reply = redis.register_script(_KEEP_REPLY)
        self._bind_lead = redis.register_script(_BIND_LEAD)
        self._commit_turn = redis.register_script(_COMMIT_TURN)
        self._finish_turn = redis.register_script(_FINISH_TURN)
        self._defer_turn = redis.register_script(_DEFER_TURN)
        self._begin_reply = redis.register_script(_BEGIN_REPLY)
        self._resend = redis.register_script(_RESEND)
        self._reply_delivered = redis.register_script(_REPLY_DELIVERED)
        self._remember_sent = redis.register_script(_REMEMBER_SENT)
        self._hset_if_exists = redis.register_script(_HSET_IF_EXISTS)
        self._item_done = redis.register_script(_ITEM_DONE)
        self._outbox_failed = redis.register_script(_OUTBOX_FAILED)
        self._clear_inflight = redis.register_script(_CLEAR_INFLIGHT)
        self._recount = redis.register_script(_RECOUNT)

    async def ingest(
        self,
        webhooks: int,
        events: list[tuple[str, str]],
        counters: Mapping[str, int] | None = None,
    ) -> list[bool]:
        """Store (dedupe key, payload) events of `webhooks` bodies; True for each new one.
        `counters` (refused bodies and skipped items of the batch) are added to the stats
        in the same script.

        One round trip for a whole batch of webhooks: this is the ack path.
        """
        now = time.time()
        counted = counters or {}
        args: list[str | int] = [
            SEEN_TTL_SECONDS,
            f"{now:.3f}",
            webhooks,
            len(counted),
            series.KEPT_SECONDS,
        ]
        for name, n in counted.items():
            args.extend((name, n))
        for key, payload in events:
            try:
                route = routing_key(json.loads(payload))
            except (ValueError, AttributeError):
                route = ""  # unreadable: any partition; its consumer parks it
            args.extend((key, 5 + event_partition(route, self.event_partitions), payload))
        result = await self._ingest(
            keys=[
                WEBHOOKS_LAST,
                WEBHOOKS_TOTAL,
                STATS,
                series.bucket_key(series.bucket_start(now)),
                *self._partition_streams,
            ],
            args=args,
        )
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
        inbox_max: int = 100,
        customer_at_ms: int = 0,
        origin: str = "",
        stream_id: str = "",
        stream: str = EVENTS_STREAM,
        owner: str = "",
    ) -> Applied:
        """Record a message in its conversation once; `history_entry` '' keeps it out of
        the history. With `stream_id`, only while that event is still in `stream`; with
        `owner`, only while that replica holds the stream's lease. The inbox keeps the
        newest `inbox_max` messages. A customer's message (`customer_at_ms`, Kommo's time
        of it) moves `customer_at` forward, never back: it opens WhatsApp's window; the
        chat's `origin` is kept as the last message names it."""
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
                stream,
                event_owner_key(stream),
                REPLIES_DUE,
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
                stream_id,
                self._r_ms,
                owner,
                max(inbox_max, 1),
                customer_at_ms,
                origin,
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
        await self._clear_inflight(
            keys=[conversation_key(conversation_id), HANDOFFS_DUE, BOT_STATES],
            args=[conversation_id],
        )

    async def state_counts(self) -> dict[str, int]:
        """Conversations by bot state (`active`, `paused`) and those whose turn is at n8n
        (`awaiting_reply`), counted in BOT_STATES: one round trip whatever their number.
        The first read after an upgrade files the conversations from before once
        (`recount_states`)."""
        p, a = BOT_STATE_PAUSED, BOT_STATE_AWAITING
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(BOT_STATES_SINCE)
            pipe.zcount(BOT_STATES, 0, p - 1)
            pipe.zcount(BOT_STATES, p, p + a)
            pipe.zcount(BOT_STATES, a, a)
            pipe.zcount(BOT_STATES, p + a, p + a)
            filed, active, paused, awaiting, paused_awaiting = await pipe.execute()
        if not filed and await self.recount_states():
            return await self.state_counts()
        return {
            "active": int(active),
            "paused": int(paused),
            "awaiting_reply": int(awaiting) + int(paused_awaiting),
        }

    async def recount_states(self) -> bool:
        """File every conversation in BOT_STATES again from its own hash (and take out
        members whose conversation is gone); False when another replica is doing it.
        Reads every conversation: only for data written before BOT_STATES existed.
        Scripts running meanwhile file their own conversation; ZSCAN returns every member
        present for the whole walk at least once, and filing one twice is harmless."""
        owner = uuid.uuid4().hex
        if not await self.redis.set(BOT_STATES_RECOUNT_LOCK, owner, nx=True, px=_RECOUNT_LOCK_MS):
            return False
        try:
            for index in (CONVERSATIONS, BOT_STATES):
                ids: list[str] = []
                async for member, _ in self.redis.zscan_iter(index, count=_PAGE):
                    ids.append(text(member))
                    if len(ids) >= _PAGE:
                        await self._recount_each(ids)
                        ids = []
                await self._recount_each(ids)
            await self.redis.set(BOT_STATES_SINCE, now_ms(), nx=True)
        finally:
            if await self.redis.get(BOT_STATES_RECOUNT_LOCK) == owner.encode():
                await self.redis.delete(BOT_STATES_RECOUNT_LOCK)
        return True

    async def _recount_each(self, ids: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                await self._recount(
                    keys=[conversation_key(conversation_id), BOT_STATES],
                    args=[conversation_id],
                    client=pipe,
                )
            await pipe.execute()
        await self.redis.pexpire(BOT_STATES_RECOUNT_LOCK, _RECOUNT_LOCK_MS)

    async def bind_lead(self, conversation_id: str, lead_id: int) -> bool:
        """Give a conversation without a lead the lead found for it (see _BIND_LEAD)."""
        bound = await self._bind_lead(
            keys=[conversation_key(conversation_id), by_lead_key(lead_id)],
            args=[conversation_id, lead_id, now_ms(), self._r_ms],
        )
        return bool(bound)

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
        self,
        job_id: str,
        conversation_id: str,
        entry: dict[str, Any],
        cap: int,
        *,
        parts_sent: int = 1,
        last: bool = True,
    ) -> None:
        """Kommo took (a part of) the reply: count it on the job and add its text to the
        history together, so a retry after a crash neither sends it again nor records it
        twice; `last`: the whole reply is out. Nothing is written for a conversation
        erased meanwhile."""
        await self._reply_delivered(
            keys=[
                reply_job_key(job_id),
                history_key(conversation_id),
                conversation_key(conversation_id),
            ],
            args=[
                json.dumps(entry, ensure_ascii=False),
                max(cap, 1),
                conversation_id,
                now_ms(),
                self._r_ms,
                parts_sent,
                "1" if last else "0",
            ],
        )

    async def remember_sent(self, conversation_id: str, text_hash: str) -> None:
        await self._remember_sent(
            keys=[sent_key(conversation_id), conversation_key(conversation_id)],
            args=[text_hash, SENT_TTL_SECONDS * 1000, self._r_ms],
        )

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
        inflight_token: str | None = None,
        purpose: str = "",
    ) -> bool:
        """Store the envelope (due at `outbox_lease_ms` from now) and the turn in flight,
        and take the turn off the queue if the claim still holds it. Only if the turn at
        n8n is still `inflight_token` ('' = none; None = whatever it is). `purpose`: the
        WhatsApp template its answer becomes if the window is closed (a proactive start's)."""
        token = "*" if inflight_token is None else inflight_token
        async with claim.pinned:
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
                    self._r_ms,
                    token,
                    purpose,
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
        await self._item_done(
            keys=[outbox_item_key(claim.member), OUTBOX_DUE],
            args=[
                claim.member,
                DELIVERED_KEPT_SECONDS * 1000,
                self._r_ms,
                "delivered_at",
                now_ms(),
                "attempts",
                0,
            ],
        )

    async def resend(self, event_id: str) -> bool:
        """Send a delivered envelope to n8n again (its reply never came); False when the
        envelope is gone or already on its way."""
        return bool(await self._resend(keys=[outbox_item_key(event_id), OUTBOX_DUE], args=[
            event_id, now_ms()
        ]))  # fmt: skip

    async def outbox_failed(self, claim: Claim, error: str, next_due_ms: int | None) -> None:
        """Record a failed attempt; `next_due_ms` None parks the item as a dead letter.
        An item erased meanwhile is only taken off the queue."""
        await self._outbox_failed(
            keys=[outbox_item_key(claim.member), OUTBOX_DUE, OUTBOX_DEAD],
            args=[
                claim.member,
                error[:500],
                "" if next_due_ms is None else next_due_ms,
                now_ms(),
            ],
        )

    async def begin_reply(
        self,
        idempotency_key: str,
        job_id: str,
        job: dict[str, str],
        lease_ms: int,
        *,
        leased_until: int | None = None,
    ) -> str | None:
        """Store a reply job unless the key was seen; returns the existing job id if so.
        NotFound when the conversation (job["conversation_id"]) is gone."""
        flat: list[str] = []
        for field, value in job.items():
            flat.extend((field, value))
        conversation_id = job["conversation_id"]
        now = now_ms()
        existing = await self._begin_reply(
            keys=[
                reply_idempotency_key(idempotency_key),
                reply_job_key(job_id),
                REPLIES_DUE,
                conversation_key(conversation_id),
            ],
            args=[
                job_id,
                REPLY_TOKEN_TTL_SECONDS,
                json.dumps(flat),
                now + lease_ms if leased_until is None else leased_until,
                self._r_ms,
                now,
                conversation_id,
            ],
        )
        if existing == b"":
            raise NotFound(f"conversation {conversation_id} not found")
        return cast(bytes, existing).decode() if existing else None

    async def reply_for_key(self, key: str) -> str | None:
        value = await self.redis.get(reply_idempotency_key(key))
        return text(value) if value else None

    async def reply_job(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(reply_job_key(job_id))
        return text_map(raw)

    async def update_reply_job(self, job_id: str, **fields: str | int | float) -> None:
        await self.hset_if_exists(reply_job_key(job_id), fields)

    async def record_decision(
        self, conversation_id: str, fields: dict[str, str | int | float]
    ) -> None:
        """The bot rules' decision on a turn (and the session state it keeps), on the
        conversation's hash; nothing for a conversation erased meanwhile."""
        await self.hset_if_exists(conversation_key(conversation_id), fields)

    async def hset_if_exists(self, key: str, fields: dict[str, str | int | float]) -> bool:
        """Set fields of a work item unless it is gone (erased or expired)."""
        flat: list[str | int | float] = []
        for field, value in fields.items():
            flat.extend((field, value))
        return bool(await self._hset_if_exists(keys=[key], args=flat))

    async def record_history(self, conversation_id: str, entry: dict[str, Any], cap: int) -> None:
        await self._record_history(
            keys=[history_key(conversation_id), conversation_key(conversation_id)],
            args=[
                json.dumps(entry, ensure_ascii=False),
                max(cap, 1),
                conversation_id,
                now_ms(),
                self._r_ms,
            ],
        )

    async def keep_reply(self, claim: Claim, conversation_id: str, customer_at: str) -> bool:
        """The reply waits for the customer's next message (see _KEEP_REPLY); False when
        the customer already wrote after `customer_at` (it is due again now)."""
        kept = await self._keep_reply(
            keys=[reply_job_key(claim.member), REPLIES_DUE, conversation_key(conversation_id)],
            args=[claim.member, customer_at or "0", now_ms()],
        )
        return int(cast(int, kept)) == 1

    async def reply_failed(self, job_id: str, error: str) -> None:
        await self._item_done(
            keys=[reply_job_key(job_id), REPLIES_DUE],
            args=[job_id, 0, self._r_ms, "state", "failed", "error", error[:500]],
        )

    async def reply_done(self, claim: Claim) -> None:
        await self._item_done(
            keys=[reply_job_key(claim.member), REPLIES_DUE],
            args=[claim.member, REPLY_TOKEN_TTL_SECONDS * 1000, self._r_ms, "state", "delivered"],
        )


class Operations:
    """What operators read and do: listings, debugging, reset, dead letters."""

    def __init__(self, redis: aioredis.Redis, retention_seconds: int = 0) -> None:
        self.redis = redis
        self._r_ms = retention_ms(retention_seconds)
        self._recount = redis.register_script(_RECOUNT)

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
            await self._recount(
                keys=[conversation_key(conversation_id), BOT_STATES], args=[conversation_id]
            )
            keys_deleted += int(results[0])
            deleted += 1 if results[0] else 0
        return deleted, keys_deleted

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


# KEYS: conversation, its bot log, RESUMES_DUE. ARGV: id, state, by, reason, resumes
# at, now, log entry, R, entries kept. The state it had before; nil when the
# conversation is gone (erased or expired): nothing is written then.
_SET_STATE = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local previous = redis.call('HGET', KEYS[1], 'bot_state') or 'active'
if ARGV[2] == 'paused' then
  redis.call('HSET', KEYS[1], 'bot_state', ARGV[2], 'paused_by', ARGV[3],
    'paused_reason', ARGV[4], 'paused_at', ARGV[6], 'resumes_at', ARGV[5])
  if ARGV[5] ~= '0' then
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  else
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
else
  redis.call('HSET', KEYS[1], 'bot_state', ARGV[2])
  redis.call('HDEL', KEYS[1], 'paused_by', 'paused_reason', 'paused_at', 'resumes_at')
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
expire(KEYS[2], life(0, KEYS[1], tonumber(ARGV[8])))
recount(ARGV[1])
return previous
"""
)

_PUSH_RESUME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'resumes_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: the job, its due queue, its conversation. ARGV: job id, due at, own lifetime
# (ms), now, R, then the job's field/value pairs. 0 when the conversation is gone.
_ADD_JOB = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local R, now = tonumber(ARGV[5]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local ms = life(tonumber(ARGV[3]), KEYS[3], R)
expire(KEYS[1], ms)
own(KEYS[3], KEYS[1], ms, now, R)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""
)


def _flat(mapping: dict[str, str]) -> list[str]:
    out: list[str] = []
    for field, value in mapping.items():
        out.extend((field, value))
    return out


class BotStore:
    """The bot's state per conversation, its history, and the Kommo notifications."""

    def __init__(self, redis: aioredis.Redis, retention_seconds: int = 0) -> None:
        self.redis = redis
        self._r_ms = retention_ms(retention_seconds)
        self.resumes = DueQueue(redis, RESUMES_DUE)
        self.handoffs = DueQueue(redis, HANDOFFS_DUE)
        self.notifications = DueQueue(redis, NOTIFY_DUE)
        self._set_state = redis.register_script(_SET_STATE)
        self._push_resume = redis.register_script(_PUSH_RESUME)
        self._add_job = redis.register_script(_ADD_JOB)
        self._hset_if_exists = redis.register_script(_HSET_IF_EXISTS)

    async def set_state(
        self,
        conversation_id: str,
        state: str,
        by: str,
        reason: str,
        resumes_at_ms: int,
    ) -> str | None:
        """Set the bot's state; returns the state it had before, None (and nothing set)
        when the conversation is gone."""
        now = now_ms()
        entry = json.dumps({"state": state, "by": by, "reason": reason, "at": now / 1000})
        previous = await self._set_state(
            keys=[conversation_key(conversation_id), bot_log_key(conversation_id), RESUMES_DUE],
            args=[
                conversation_id,
                state,
                by,
                reason,
                resumes_at_ms,
                now,
                entry,
                self._r_ms,
                BOT_LOG_KEPT,
            ],
        )
        return text(cast(bytes, previous)) if previous else None

    async def push_resume(self, conversation_id: str, resumes_at_ms: int) -> None:
        """A person wrote again: the quiet period starts over."""
        await self._push_resume(
            keys=[conversation_key(conversation_id), RESUMES_DUE],
            args=[conversation_id, resumes_at_ms],
        )

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

    async def count_many(self, counters: Mapping[str, int]) -> None:
        """Several counters at once, as `count` adds one."""
        key = series.bucket_key(series.bucket_start(time.time()))
        async with self.redis.pipeline(transaction=False) as pipe:
            for counter, n in counters.items():
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

    async def add_notification(
        self, job_id: str, job: dict[str, str], lease_ms: int, conversation_id: str
    ) -> bool:
        """Queue a note or task about this conversation's lead; False (nothing queued)
        when the conversation is gone."""
        now = now_ms()
        added = await self._add_job(
            keys=[notify_key(job_id), NOTIFY_DUE, conversation_key(conversation_id)],
            args=[job_id, now + lease_ms, JOB_KEPT_SECONDS * 1000, now, self._r_ms, *_flat(job)],
        )
        return bool(added)

    async def notification(self, job_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(notify_key(job_id)))

    async def mark_noted(self, job_id: str) -> None:
        await self._hset_if_exists(keys=[notify_key(job_id)], args=["noted", "1"])

    async def notification_done(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(NOTIFY_DUE, job_id)
            pipe.delete(notify_key(job_id))
            await pipe.execute()


_CLAIM_START = (
    _LIB
    + """
local R, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local ms = life(tonumber(ARGV[2]), KEYS[2], R)
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ms) then
  return redis.call('GET', KEYS[1]) or ''
end
own(KEYS[2], KEYS[1], ms, now, R)
return 1
"""
)

# KEYS: conversation, by-lead, by-contact (or ''). ARGV: id, now, lead, contact, R.
_ENSURE_CONVERSATION = (
    _LIB
    + """
redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('HSETNX', KEYS[1], 'bot_state', 'active')
redis.call('HSETNX', KEYS[1], 'lead_id', ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('HSETNX', KEYS[1], 'contact_id', ARGV[4])
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'NX')
touch(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5]))
recount(ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
)


class ProactiveStore:
    def __init__(self, redis: aioredis.Redis, retention_seconds: int = 0) -> None:
        self.redis = redis
        self._r_ms = retention_ms(retention_seconds)
        self.waiting = DueQueue(redis, PROACTIVE_DUE)
        self.fallbacks = DueQueue(redis, FALLBACKS_DUE)
        self._claim_start = redis.register_script(_CLAIM_START)
        self._ensure = redis.register_script(_ENSURE_CONVERSATION)
        self._add_job = redis.register_script(_ADD_JOB)

    async def claim_start(
        self, lead_id: int, trigger: str, conversation_id: str, ttl: int
    ) -> float | None:
        """None for the first start of this lead and trigger (claimed now); for a start
        already claimed, when it is scheduled to go (Unix seconds; 0 = not waiting)."""
        answer = await self._claim_start(
            keys=[proactive_key(lead_id, trigger), conversation_key(conversation_id)],
            args=[conversation_id, ttl * 1000, self._r_ms, now_ms()],
        )
        if answer == 1:
            return None
        _, _, scheduled_ms = text(answer).partition("|")
        return int(scheduled_ms) / 1000 if scheduled_ms.isdigit() else 0.0

    async def start_scheduled(
        self, lead_id: int, trigger: str, conversation_id: str, at_ms: int
    ) -> None:
        """The claimed start waits until `at_ms`: a repeated start says when it goes."""
        await self.redis.set(
            proactive_key(lead_id, trigger), f"{conversation_id}|{at_ms}", xx=True, keepttl=True
        )

    async def forget_start(self, lead_id: int, trigger: str) -> None:
        await self.redis.delete(proactive_key(lead_id, trigger))

    async def ensure_conversation(
        self, conversation_id: str, lead_id: int, contact_id: int
    ) -> dict[str, str]:
        """The lead's conversation, opened if needed: a proactive start is a message."""
        flat = await self._ensure(
            keys=[
                conversation_key(conversation_id),
                by_lead_key(lead_id),
                by_contact_key(contact_id),
            ],
            args=[conversation_id, now_ms(), lead_id, contact_id, self._r_ms],
        )
        pairs = cast(list[bytes], flat)
        return {text(pairs[i]): text(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    async def add_job(self, queue: DueQueue, job_id: str, job: dict[str, str], due_ms: int) -> bool:
        """Queue a job of job["conversation_id"]; False (nothing queued) when that
        conversation is gone."""
        added = await self._add_job(
            keys=[
                proactive_job_key(job_id),
                queue.key,
                conversation_key(job["conversation_id"]),
            ],
            args=[job_id, due_ms, JOB_KEPT_SECONDS * 1000, now_ms(), self._r_ms, *_flat(job)],
        )
        return bool(added)

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


# A new version of the rules, only over the version the writer read when it names one
# (ARGV[2] = '' for none): the version written, or -1 (and the current one) if another
# change came first.
_PUT_RULES = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {-1, current}
end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'version', current + 1, 'updated_at', ARGV[3])
return {current + 1, current}
"""


@dataclass(frozen=True, slots=True)
class StoredRules:
    json: str
    version: int
    updated_at: str


class RulesStore:
    """The bot rules written through the API, versioned."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._put = redis.register_script(_PUT_RULES)

    async def get(self) -> StoredRules | None:
        raw = text_map(await self.redis.hgetall(BOT_RULES))
        if not raw.get("json"):
            return None
        return StoredRules(raw["json"], int(raw.get("version") or 0), raw.get("updated_at", ""))

    async def version(self) -> int:
        return int(await self.redis.hget(BOT_RULES, "version") or 0)

    async def put(self, rules_json: str, expected_version: int | None, updated_at: str) -> int:
        """The version written; Conflict when `expected_version` is not the current one."""
        written, current = cast(
            list[int],
            await self._put(
                keys=[BOT_RULES],
                args=[rules_json, "" if expected_version is None else expected_version, updated_at],
            ),
        )
        if int(written) < 0:
            raise Conflict(
                f"the bot rules changed meanwhile (now version {current}, not "
                f"{expected_version}): read them again, then change them"
            )
        return int(written)


# Deletes one conversation's keys and queue entries at once. ARGV[1] is JSON: id, cutoff
# (> 0: only if the conversation has had no message since — the sweep must not take a
# conversation a message just refreshed), delete (keys), pointers (index keys deleted
# only while they point to this conversation), unqueue ([queue, member] pairs).
_ERASE_CONVERSATION = (
    _LIB
    + """
local a = cjson.decode(ARGV[1])
if a.cutoff > 0 then
  local score = redis.call('ZSCORE', KEYS[1], a.id)
  if score and tonumber(score) >= a.cutoff then return {-1, 0} end
end
local keys = 0
for _, k in ipairs(a.delete) do keys = keys + redis.call('DEL', k) end
for _, k in ipairs(a.pointers) do
  if redis.call('GET', k) == a.id then keys = keys + redis.call('DEL', k) end
end
local queued = 0
for _, p in ipairs(a.unqueue) do queued = queued + redis.call('ZREM', p[1], p[2]) end
recount(a.id)
return {keys, queued}
"""
)

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
_PAGE = 500


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
        self._erase = redis.register_script(_ERASE_CONVERSATION)

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
                    list[bytes], await self.redis.zrange(CONVERSATIONS, start, start + _PAGE - 1)
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
            start += _PAGE
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
                await self.redis.xrange(stream, start, "+", count=_PAGE),
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
            if len(entries) < _PAGE:
                return
            start = "(" + text(entries[-1][0])

    async def sweep(self, limit: int = _PAGE) -> Counter[str]:
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


# Renew (ARGV[2] ms) or release (ARGV[2] '') a lease only while ARGV[1] holds it.
_KEEP_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class EventLeases:
    """Owner leases of the event streams, and the heartbeats of the live replicas."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._keep = redis.register_script(_KEEP_LEASE)

    async def beat(self, replica: str, lease_ms: int) -> int:
        """This replica is alive; how many are (seen within a lease)."""
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(EVENT_REPLICAS, {replica: now})
            pipe.zremrangebyscore(EVENT_REPLICAS, "-inf", now - lease_ms)
            pipe.zcard(EVENT_REPLICAS)
            result = await pipe.execute()
        return max(int(result[-1]), 1)

    async def leave(self, replica: str) -> None:
        await self.redis.zrem(EVENT_REPLICAS, replica)

    async def take(self, stream: str, replica: str, lease_ms: int) -> bool:
        return bool(await self.redis.set(event_owner_key(stream), replica, nx=True, px=lease_ms))

    async def renew(self, stream: str, replica: str, lease_ms: int) -> bool:
        return bool(await self._keep(keys=[event_owner_key(stream)], args=[replica, lease_ms]))

    async def release(self, stream: str, replica: str) -> bool:
        return bool(await self._keep(keys=[event_owner_key(stream)], args=[replica, ""]))

    async def owner(self, stream: str) -> str:
        return text(await self.redis.get(event_owner_key(stream)) or b"")


def _as_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
