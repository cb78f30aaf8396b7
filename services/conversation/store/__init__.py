"""The conversation service's Redis state: every key, with its lifetime and why
(keys.py), the Lua scripts that keep multi-key changes atomic (lua/*.lua, each with its
KEYS, ARGV and what it returns; loaded by scripts.py), and one module per aggregate —
conversations.py (the conversation record, applying a message, the lead/contact/chat
indexes, counts by bot state) with turns.py (turns and the n8n outbox) and replies.py,
bot_state.py (the bot's state, counters, notes for Kommo), proactive.py, rules.py (the
bot rules document), privacy.py (erase and the retention sweep: the one deletion of a
conversation, which a reset uses too), operations.py (listings, debugging, reset, dead
letters, queue sizes) and leases.py (the event partitions' leases). Other modules import
from here or from those.

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
(`conv:events:{pN}:owner`, stages/event_partitions.PartitionOwnership), so one conversation's events
are applied in order whichever replica reads them. The single stream of earlier versions
(EVENTS_STREAM) is still drained, under a lease of its own, until it is empty. A
customer's message of a lead with a conversation skips its stream when the stream holds
nothing: the ingest applies it in the same call as its ack (lua/ingest.lua runs
`apply_message` of lua/_apply.lua), since no event of its partition, so none of its
conversation, can be older (issue 22). That call touches the conversation's keys beside
the partition's stream: on a Redis Cluster such a message would go through the stream.

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

from services.conversation.store.bot_state import (
    BotStore,
)
from services.conversation.store.conversations import (
    Applied,
    ConversationStore,
    EchoCheck,
    TurnOffer,
)
from services.conversation.store.keys import (
    BOT_LOG_KEPT,
    BOT_RULES,
    BOT_STATE_AWAITING,
    BOT_STATE_PAUSED,
    BOT_STATES,
    BOT_STATES_RECOUNT_LOCK,
    BOT_STATES_SINCE,
    BY_CHAT_PREFIX,
    BY_CONTACT_PREFIX,
    BY_LEAD_PREFIX,
    CONVERSATION_PREFIX,
    CONVERSATIONS,
    DEFAULT_EVENT_PARTITIONS,
    DELIVERED_KEPT_SECONDS,
    EVENT_REPLICAS,
    EVENTS_STREAM,
    FALLBACKS_DUE,
    HANDOFFS_DUE,
    JOB_KEPT_SECONDS,
    N8N_FAILING,
    NOTIFY_DUE,
    NOTIFY_PREFIX,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    OUTBOX_PREFIX,
    PROACTIVE_DUE,
    PROACTIVE_JOB_PREFIX,
    REPLIES_DUE,
    REPLY_JOB_PREFIX,
    REPLY_KEY_PREFIX,
    REPLY_TOKEN_PREFIX,
    REPLY_TOKEN_TTL_SECONDS,
    RESUMES_DUE,
    SEEN_TTL_SECONDS,
    SENT_TTL_SECONDS,
    STATS,
    TEMPLATES,
    TURNS_DUE,
    WEBHOOKS_LAST,
    WEBHOOKS_TOTAL,
    WORK_FAILURES,
    WORKERS_GROUP,
    applied_key,
    bot_log_key,
    by_chat_key,
    by_contact_key,
    by_lead_key,
    conversation_key,
    event_owner_key,
    event_partition,
    event_stream,
    event_streams,
    history_key,
    inbox_key,
    keys_index_key,
    notify_key,
    outbox_item_key,
    proactive_job_key,
    proactive_key,
    reply_idempotency_key,
    reply_job_key,
    reply_token_key,
    retention_ms,
    routing_key,
    seen_key,
    sent_key,
)
from services.conversation.store.leases import (
    EventLeases,
)
from services.conversation.store.operations import (
    Operations,
)
from services.conversation.store.privacy import (
    ERASED_KINDS,
    Erasure,
    Privacy,
)
from services.conversation.store.proactive import (
    ProactiveStore,
)
from services.conversation.store.rules import (
    RulesStore,
    StoredRules,
)

__all__ = [
    "BOT_LOG_KEPT",
    "BOT_RULES",
    "BOT_STATES",
    "BOT_STATES_RECOUNT_LOCK",
    "BOT_STATES_SINCE",
    "BOT_STATE_AWAITING",
    "BOT_STATE_PAUSED",
    "BY_CHAT_PREFIX",
    "BY_CONTACT_PREFIX",
    "BY_LEAD_PREFIX",
    "CONVERSATIONS",
    "CONVERSATION_PREFIX",
    "DEFAULT_EVENT_PARTITIONS",
    "DELIVERED_KEPT_SECONDS",
    "ERASED_KINDS",
    "EVENTS_STREAM",
    "EVENT_REPLICAS",
    "FALLBACKS_DUE",
    "HANDOFFS_DUE",
    "JOB_KEPT_SECONDS",
    "N8N_FAILING",
    "NOTIFY_DUE",
    "NOTIFY_PREFIX",
    "OUTBOX_DEAD",
    "OUTBOX_DUE",
    "OUTBOX_PREFIX",
    "PROACTIVE_DUE",
    "PROACTIVE_JOB_PREFIX",
    "REPLIES_DUE",
    "REPLY_JOB_PREFIX",
    "REPLY_KEY_PREFIX",
    "REPLY_TOKEN_PREFIX",
    "REPLY_TOKEN_TTL_SECONDS",
    "RESUMES_DUE",
    "SEEN_TTL_SECONDS",
    "SENT_TTL_SECONDS",
    "STATS",
    "TEMPLATES",
    "TURNS_DUE",
    "WEBHOOKS_LAST",
    "WEBHOOKS_TOTAL",
    "WORKERS_GROUP",
    "WORK_FAILURES",
    "Applied",
    "BotStore",
    "ConversationStore",
    "EchoCheck",
    "Erasure",
    "EventLeases",
    "Operations",
    "Privacy",
    "ProactiveStore",
    "RulesStore",
    "StoredRules",
    "TurnOffer",
    "applied_key",
    "bot_log_key",
    "by_chat_key",
    "by_contact_key",
    "by_lead_key",
    "conversation_key",
    "event_owner_key",
    "event_partition",
    "event_stream",
    "event_streams",
    "history_key",
    "inbox_key",
    "keys_index_key",
    "notify_key",
    "outbox_item_key",
    "proactive_job_key",
    "proactive_key",
    "reply_idempotency_key",
    "reply_job_key",
    "reply_token_key",
    "retention_ms",
    "routing_key",
    "seen_key",
    "sent_key",
]
