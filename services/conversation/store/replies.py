"""Replies: n8n's reply stored once per idempotency key as a job, delivered to Kommo part
by part into the history, kept for the customer while WhatsApp's window is closed, done
or failed; the bridge's own sends remembered to recognise their echo. Part of
ConversationStore."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, now_ms, text, text_map
from services.common.errors import NotFound
from services.common.reports import ReportDays
from services.conversation import reports, series
from services.conversation.store.keys import (
    HANDOFFS_DUE,
    REPLIES_DUE,
    REPLY_TOKEN_TTL_SECONDS,
    SENT_TTL_SECONDS,
    STATS,
    TURNS_DUE,
    conversation_key,
    history_key,
    inbox_key,
    outbox_item_key,
    reply_idempotency_key,
    reply_job_key,
    reply_token_key,
    sent_key,
)
from services.conversation.store.scripts import register


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What a reply from n8n is checked against (`Replies.reply_context`)."""

    # The turn its reply token answers ({} without a token, or for an unknown token).
    turn: dict[str, str]
    # Its conversation ('' for an unknown token) and that conversation's record ({} if gone).
    conversation_id: str
    conversation: dict[str, str]
    # The job its idempotency key already took.
    seen: str | None


@dataclass(frozen=True, slots=True)
class TakenReply:
    """What `Replies.take_reply` found, and did: `outcome` one of "unknown_token", "gone"
    (no conversation), "duplicate" (`seen`: the job the key took), "paused" (the bot is
    not active), "no_address" (no lead, no chat), "begun" (the job stored and leased)."""

    outcome: str
    conversation_id: str
    conversation: dict[str, str]
    turn: dict[str, str]
    seen: str


@dataclass(frozen=True, slots=True)
class LastPart:
    """A reply's last message, delivered, recorded with the reply's end
    (`Replies.reply_finished`) rather than in a call of its own."""

    entry: dict[str, Any]
    # History entries kept, the reply's parts sent with this one, its counter.
    cap: int
    parts_sent: int
    counter: str = ""


class Replies:
    """ConversationStore's replies (a part of it: see conversations.py)."""

    redis: aioredis.Redis
    _r_ms: int
    report_days: ReportDays

    def _register_reply_scripts(self, redis: aioredis.Redis) -> None:
        self._begin_reply = register(redis, "begin_reply")
        self._reply_delivered = register(redis, "reply_delivered")
        self._remember_sent = register(redis, "remember_sent")
        self._keep_reply = register(redis, "keep_reply")
        self._hset_if_exists = register(redis, "hset_if_exists")
        self._reply_item_done = register(redis, "item_done")
        self._reply_failed = register(redis, "reply_failed")
        self._reply_finished = register(redis, "reply_finished")
        self._reply_context = register(redis, "reply_context")
        self._take_reply = register(redis, "take_reply")

    async def reply_delivered(
        self,
        job_id: str,
        conversation_id: str,
        entry: dict[str, Any],
        cap: int,
        *,
        parts_sent: int = 1,
        last: bool = True,
        counter: str = "",
    ) -> None:
        """Kommo took (a part of) the reply: count it on the job and add its text to the
        history together, so a retry after a crash neither sends it again nor records it
        twice; `last`: the whole reply is out; `counter` counted with it. Nothing is
        written for a conversation erased meanwhile."""
        await self._reply_delivered(
            keys=[
                reply_job_key(job_id),
                history_key(conversation_id),
                conversation_key(conversation_id),
                STATS,
                series.bucket_key(series.bucket_start(time.time())),
                self.report_days.key(),
            ],
            args=[
                json.dumps(entry, ensure_ascii=False),
                max(cap, 1),
                conversation_id,
                now_ms(),
                self._r_ms,
                parts_sent,
                "1" if last else "0",
                counter,
                series.KEPT_SECONDS,
            ],
        )

    async def remember_sent(self, conversation_id: str, text_hash: str) -> None:
        await self._remember_sent(
            keys=[sent_key(conversation_id), conversation_key(conversation_id)],
            args=[text_hash, SENT_TTL_SECONDS * 1000, self._r_ms],
        )

    async def begin_reply(
        self,
        idempotency_key: str,
        job_id: str,
        job: dict[str, str],
        lease_ms: int,
        *,
        leased_until: int | None = None,
        fingerprints: list[str] | None = None,
    ) -> str | None:
        """Store a reply job unless the key was seen; returns the existing job id if so.
        NotFound when the conversation (job["conversation_id"]) is gone. `fingerprints`
        of the texts it will send are remembered in the same call (as `remember_sent`)."""
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
                sent_key(conversation_id),
            ],
            args=[
                job_id,
                REPLY_TOKEN_TTL_SECONDS,
                json.dumps(flat),
                now + lease_ms if leased_until is None else leased_until,
                self._r_ms,
                now,
                conversation_id,
                SENT_TTL_SECONDS * 1000,
                *(fingerprints or []),
            ],
        )
        if existing == b"":
            raise NotFound(f"conversation {conversation_id} not found")
        return cast(bytes, existing).decode() if existing else None

    async def reply_context(
        self, reply_token: str, conversation_id: str, idempotency_key: str
    ) -> ReplyContext:
        """What a reply is checked against, in one call: the turn `reply_token` answers
        (when it has one; else the reply is for `conversation_id`), the conversation's
        record, and the job `idempotency_key` already took."""
        first = reply_token_key(reply_token) if reply_token else conversation_key(conversation_id)
        turn, found, record, seen = cast(
            list[Any],
            await self._reply_context(
                keys=[first, reply_idempotency_key(idempotency_key)],
                args=["token" if reply_token else "conversation"],
            ),
        )
        return ReplyContext(
            turn={text(turn[i]): text(turn[i + 1]) for i in range(0, len(turn), 2)},
            conversation_id=text(found) if reply_token else conversation_id,
            conversation={text(record[i]): text(record[i + 1]) for i in range(0, len(record), 2)},
            seen=text(seen) or None,
        )

    async def take_reply(
        self,
        reply_token: str,
        conversation_id: str,
        idempotency_key: str,
        job_id: str,
        job: dict[str, str],
        leased_until: int,
        *,
        closed_window_purpose: str = "",
        fingerprints: list[str] | None = None,
    ) -> TakenReply:
        """`reply_context`, its checks and `begin_reply` in one call (take_reply.lua), for
        a reply whose messages do not depend on its conversation. `job` without the
        fields the conversation and its turn give (conversation_id, lead_id, chat_id,
        event_id, closed_window_purpose: '' = the turn's purpose), which the script adds;
        begun, the job is leased to the caller until `leased_until`."""
        first = reply_token_key(reply_token) if reply_token else conversation_key(conversation_id)
        flat: list[str] = []
        for field, value in job.items():
            flat.extend((field, value))
        outcome, found, record, turn, seen = cast(
            list[Any],
            await self._take_reply(
                keys=[
                    first,
                    reply_idempotency_key(idempotency_key),
                    reply_job_key(job_id),
                    REPLIES_DUE,
                ],
                args=[
                    "token" if reply_token else "conversation",
                    job_id,
                    REPLY_TOKEN_TTL_SECONDS,
                    json.dumps(flat),
                    leased_until,
                    self._r_ms,
                    now_ms(),
                    conversation_id,
                    SENT_TTL_SECONDS * 1000,
                    closed_window_purpose,
                    *(fingerprints or []),
                ],
            ),
        )
        return TakenReply(
            outcome=text(outcome),
            conversation_id=text(found),
            conversation={text(record[i]): text(record[i + 1]) for i in range(0, len(record), 2)},
            turn={text(turn[i]): text(turn[i + 1]) for i in range(0, len(turn), 2)},
            seen=text(seen),
        )

    async def reply_for_key(self, key: str) -> str | None:
        value = await self.redis.get(reply_idempotency_key(key))
        return text(value) if value else None

    async def reply_job(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(reply_job_key(job_id))
        return text_map(raw)

    async def update_reply_job(self, job_id: str, **fields: str | int | float) -> None:
        await self.hset_if_exists(reply_job_key(job_id), fields)

    async def hset_if_exists(self, key: str, fields: dict[str, str | int | float]) -> bool:
        """Set fields of a work item unless it is gone (erased or expired)."""
        flat: list[str | int | float] = []
        for field, value in fields.items():
            flat.extend((field, value))
        return bool(await self._hset_if_exists(keys=[key], args=flat))

    async def keep_reply(self, claim: Claim, conversation_id: str, customer_at: str) -> bool:
        """The reply waits for the customer's next message (see lua/keep_reply.lua); False when
        the customer already wrote after `customer_at` (it is due again now)."""
        kept = await self._keep_reply(
            keys=[reply_job_key(claim.member), REPLIES_DUE, conversation_key(conversation_id)],
            args=[claim.member, customer_at or "0", now_ms()],
        )
        return int(cast(int, kept)) == 1

    async def reply_failed(self, job_id: str, error: str) -> bool:
        """Kommo refused the reply for good: the job off its queue, marked failed and
        counted as a delivery failure of its conversation, once; False when it was gone
        or had failed already."""
        failed = await self._reply_failed(
            keys=[
                reply_job_key(job_id),
                REPLIES_DUE,
                STATS,
                series.bucket_key(series.bucket_start(time.time())),
                self.report_days.key(),
            ],
            args=[job_id, self._r_ms, error[:500], series.KEPT_SECONDS],
        )
        return bool(failed)

    async def reply_finished(
        self,
        claim: Claim,
        conversation_id: str,
        reply_token: str,
        event_id: str,
        reply_seconds: float | None,
        *,
        last: LastPart | None = None,
        n8n_seconds: float | None = None,
    ) -> None:
        """Every part out and the note added: the job noted and delivered, off its queue;
        the turn it answers settled (as `finish_turn`); the reply's time (and n8n's answer
        time, for the reports only) counted when it still answers the turn in flight. With `last`, the reply's last message is
        recorded too (as `reply_delivered`). One call."""
        counts = (
            {}
            if reply_seconds is None
            else {
                series.REPLIES: 1,
                series.REPLY_MS_SUM: round(reply_seconds * 1000),
                series.latency_field(reply_seconds): 1,
            }
        )
        if counts and n8n_seconds is not None:
            counts[reports.n8n_answer_field(n8n_seconds)] = 1
        bucket = series.bucket_key(series.bucket_start(time.time()))
        keys = [
            reply_job_key(claim.member),
            REPLIES_DUE,
            conversation_key(conversation_id),
            inbox_key(conversation_id),
            TURNS_DUE,
            HANDOFFS_DUE,
            outbox_item_key(event_id),
            bucket,
        ]
        args: list[str | int] = [
            claim.member,
            REPLY_TOKEN_TTL_SECONDS * 1000,
            self._r_ms,
            reply_token,
            now_ms(),
            conversation_id,
            json.dumps(counts),
            series.KEPT_SECONDS,
        ]
        if last is not None:
            keys += [history_key(conversation_id), STATS]
            args += [
                json.dumps(last.entry, ensure_ascii=False),
                max(last.cap, 1),
                last.parts_sent,
                last.counter,
            ]
        keys.append(self.report_days.key())
        claim.settled = True  # off the queue
        await self._reply_finished(keys=keys, args=args)

    async def reply_done(self, claim: Claim) -> None:
        await self._reply_item_done(
            keys=[reply_job_key(claim.member), REPLIES_DUE],
            args=[claim.member, REPLY_TOKEN_TTL_SECONDS * 1000, self._r_ms, "state", "delivered"],
        )
