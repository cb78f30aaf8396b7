"""Every Redis key of the Kommo gateway, with its lifetime and why."""

from __future__ import annotations

# The token pair as one JSON value, so a reader never sees a half-written pair.
TOKENS = "gw:tokens"
# Held by the one replica refreshing; expires so a replica that dies mid-refresh does
# not block the others for long.
REFRESH_LOCK = "gw:refresh-lock"
# Why the last refresh failed (refused refresh token → a human must re-authorise).
TOKEN_PROBLEM = "gw:token-problem"  # noqa: S105  # a key name, not a secret
# When Kommo first refused the stored refresh token while no newer pair appeared: a
# replica frozen mid-refresh may still hold the new pair, so the account is declared
# lost only after a grace period.
REFRESH_REFUSED_SINCE = "gw:refresh-refused-since"
# Kommo answered its 403 "blocked" page: every call fails fast until this expires.
BLOCKED = "gw:blocked"
# The next free departure time to Kommo, shared by every replica (the rate limit).
# Expires a minute after the last reservation: an idle account starts afresh.
RATE_NEXT_SLOT = "gw:rate-next-slot"
# Actual departure times (µs) in the last window: the hard cap behind the spacing.
RATE_DEPARTURES = "gw:rate-departures"
# A lead's reply field belongs to one delivery at a time (see kommo_reply_spacing_seconds).
DELIVERY_TTL_SECONDS = 7 * 24 * 3600


def oauth_state_key(state: str) -> str:
    """A one-time `state` of the consent redirect; 10 minutes, Kommo's code lives ~20."""
    return f"gw:oauth-state:{state}"


OAUTH_STATE_TTL_SECONDS = 600


def lead_slot_key(lead_id: int) -> str:
    """Held while a reply is written to the lead's field (milliseconds); erased with its
    lead, which gets no more replies."""
    return f"gw:lead-slot:{lead_id}"


def delivery_key(idempotency_key: str) -> str:
    """State of one delivery: sending / unknown / sent. Kept 7 days, the reply tokens' life
    (no text nor phone: a status and a time); erased with its conversation's replies."""
    return f"gw:delivery:{idempotency_key}"


def delivery_attempt_key(idempotency_key: str) -> str:
    """Held by the one attempt delivering this key (no two attempts side by side)."""
    return f"gw:delivery-attempt:{idempotency_key}"


def cache_key(kind: str, entity_id: int) -> str:
    """Last good copy of a lead or contact, served stale when Kommo is down. Personal
    data (names, phones, the last reply in the lead's reply field): kept at most
    DATA_RETENTION_DAYS, and erased with its lead or contact (LGPD)."""
    return f"gw:cache:{kind}:{entity_id}"


# Stale copies are kept a day: long enough to ride out a Kommo outage.
CACHE_KEEP_SECONDS = 24 * 3600


def cache_keep_seconds(retention_seconds: int) -> int:
    """How long a copy is kept: a day, never longer than personal data (0 = no limit)."""
    return min(CACHE_KEEP_SECONDS, retention_seconds) if retention_seconds else CACHE_KEEP_SECONDS


# Batched calls across replicas (handoff.py): one replica holds the dispatch lease and
# sends every replica's list calls. The lease: the holder's token, renewed at a third of
# its life, so a dead holder is replaced within seconds.
BATCH_LEASE = "gw:batch-lease"
# Items handed over to the holder ("<Redis ms> <id> <JSON>": lead ids, note and reply
# texts), pulled within milliseconds; and a one-element list the holder blocks on.
BATCH_QUEUE = "gw:batch-queue"
BATCH_WAKE = "gw:batch-wake"
# Ids of the items the holder pulled and has not answered: a new holder answers them
# Unavailable (their request may have reached Kommo; never sent twice).
BATCH_INFLIGHT = "gw:batch-inflight"
# The queue and the in-flight set expire this long after their last write; a caller
# without a deadline waits no longer for its answer, so nothing outlives its caller.
BATCH_KEEP_SECONDS = 300
# Answers to items handed over (a stream every replica follows: item id → answer, with
# lead and contact bodies): read within milliseconds, kept a few seconds and the last
# entries only (one entry per batch).
BATCH_RESULTS = "gw:batch-results"
BATCH_RESULTS_KEEP_SECONDS = 30
BATCH_RESULTS_KEPT = 200

# Notes of delivered messages waiting to be added to their leads (notes.py): the note
# (lead id and text: personal data, kept seconds, until Kommo has it; erased with its
# delivery) by the delivery's idempotency key, and when each is due (the end of the
# lease of the replica adding it, or its next try).
NOTES = "gw:notes"
NOTES_DUE = "gw:notes:due"
