"""Every Redis key of the conversation service: its name (or the function that builds
it), what it holds, and how long it lives. The lifetimes and the reasons for them are
in the package's docstring (store/__init__.py)."""

from __future__ import annotations

import zlib
from typing import Any

# Webhook events, durable until a worker has applied them: applied entries are deleted
# (XDEL), so the streams hold no conversation's messages once they are processed; an
# erase deletes the unprocessed ones of its lead, contact or chat. One stream per
# partition (`event_stream`), each with an owner lease (`event_owner_key`, PX
# WORK_LEASE_SECONDS: a dead owner's partition is taken over once it expires). Every
# replica must run with the same EVENT_PARTITIONS: a changed count sends a conversation to
# another stream, so change it only with the streams drained.
EVENTS_STREAM = "conv:events"  # before partitions: drained, never written any more
WORKERS_GROUP = "workers"  # the consumer group of every event stream (not a key)
DEFAULT_EVENT_PARTITIONS = 16  # EVENT_PARTITIONS unless set
# Live conversation replicas (sorted set, consumer → last heartbeat, ms): a replica takes
# ceil(partitions / live) of them. A member unseen for a lease is dropped by the others.
EVENT_REPLICAS = "conv:events:replicas"


def event_stream(partition: int) -> str:
    """A partition's webhook events (stream), deleted as they are applied."""
    return f"conv:events:{{p{partition}}}"


def event_streams(partitions: int) -> list[str]:
    """Every event stream, the one of earlier versions last."""
    return [event_stream(p) for p in range(partitions)] + [EVENTS_STREAM]


def event_owner_key(stream: str) -> str:
    """The replica that reads this stream (string, PX WORK_LEASE_SECONDS)."""
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
WORK_FAILING = f"{WORK_FAILURES}:failing"  # WorkFailures.failing_key of that prefix
WORK_DEAD = f"{WORK_FAILURES}:dead"  # and its dead_key
WEBHOOKS_LAST = "conv:webhooks:last"  # when the last webhook came (Unix s), for /health
WEBHOOKS_TOTAL = "conv:webhooks:total"  # webhooks received, ever (counter)
# Due queues (sorted sets, no TTL: they live with the service). Their members are ids:
# a conversation's are removed by its erase (and by the sweep once it is past R); a
# worker that claims a member whose item is gone releases it.
TURNS_DUE = "conv:turns:due"  # conversations by the time their next turn is due
OUTBOX_DUE = "conv:outbox:due"  # envelopes for n8n by the time they are due
OUTBOX_DEAD = "conv:outbox:dead"  # event_id → parked at (ms); the item hash stays
# Set when a POST to n8n failed and will be retried; the first POST that goes through
# takes it (GETDEL) and pulls every envelope waiting for a retry forward: n8n is back.
# Expires with the longest wait of the retry schedule (nothing is waiting after that).
N8N_FAILING = "conv:n8n:failing"
REPLIES_DUE = "conv:replies:due"  # reply jobs by the time they are due
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
BOT_STATE_AWAITING, BOT_STATE_PAUSED = 1, 2  # the scores of BOT_STATES, added up
# Set once every conversation is filed (data from before BOT_STATES is filed once, by
# `recount_states`); one replica files them at a time, under the lock.
BOT_STATES_SINCE = "conv:bot-states:since"  # when every conversation was filed (ms)
BOT_STATES_RECOUNT_LOCK = "conv:bot-states:recount"  # the replica filing them (PX below)
RECOUNT_LOCK_MS = 60_000
# conv:series:{unix start}: the same counters per five minutes (series.py), for a day,
# with each bucket's reply latency histogram: the one source of every latency figure.
BOT_LOG_KEPT = 50  # entries of a conversation's bot log (bot_log_key)

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
CONVERSATION_PREFIX = "conv:c:"  # a conversation and its keys (conversation_key...)
BY_LEAD_PREFIX = "conv:by-lead:"  # by_lead_key
BY_CONTACT_PREFIX = "conv:by-contact:"  # by_contact_key
BY_CHAT_PREFIX = "conv:by-chat:"  # by_chat_key
OUTBOX_PREFIX = "conv:outbox:"  # outbox_item_key
REPLY_JOB_PREFIX = "conv:reply-job:"  # reply_job_key
REPLY_KEY_PREFIX = "conv:reply-key:"  # reply_idempotency_key
REPLY_TOKEN_PREFIX = "conv:reply-token:"  # noqa: S105  # reply_token_key, not a secret
NOTIFY_PREFIX = "conv:notify:"  # notify_key
PROACTIVE_JOB_PREFIX = "conv:proactive-job:"  # proactive_job_key


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


def retention_ms(retention_seconds: int) -> int:
    """R, the lifetime of a conversation's keys after its last message, as the scripts
    take it (ms; 0 = kept until erased)."""
    return max(retention_seconds, 0) * 1000


# Members read per round trip when walking an index or a stream (ZSCAN, ZRANGE, XRANGE).
PAGE = 500
