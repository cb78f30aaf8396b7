"""Turns and the n8n outbox: a turn's messages committed to n8n with its envelope and
reply token, settled by the reply (or handed off), deferred behind the turn at n8n; the
envelope delivered, failed, parked or sent again. Part of ConversationStore."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, now_ms, text_map
from services.common.reports import ReportDays
from services.conversation import series
from services.conversation.store.keys import (
    BOT_STATES,
    DELIVERED_KEPT_SECONDS,
    HANDOFFS_DUE,
    N8N_FAILING,
    OUTBOX_DEAD,
    OUTBOX_DUE,
    REPLY_TOKEN_TTL_SECONDS,
    STATS,
    TURNS_DUE,
    conversation_key,
    inbox_key,
    outbox_item_key,
    reply_token_key,
)
from services.conversation.store.scripts import register


class Turns:
    """ConversationStore's turns and outbox (a part of it: see conversations.py)."""

    redis: aioredis.Redis
    _r_ms: int
    report_days: ReportDays

    def _register_turn_scripts(self, redis: aioredis.Redis) -> None:
        self._commit_turn = register(redis, "commit_turn")
        self._finish_turn = register(redis, "finish_turn")
        self._defer_turn = register(redis, "defer_turn")
        self._resend = register(redis, "resend")
        self._item_done = register(redis, "item_done")
        self._outbox_delivered = register(redis, "outbox_delivered")
        self._outbox_failed = register(redis, "outbox_failed")
        self._clear_inflight = register(redis, "clear_inflight")

    async def clear_inflight(self, conversation_id: str) -> None:
        """The turn in flight is settled without a reply (handed off)."""
        await self._clear_inflight(
            keys=[conversation_key(conversation_id), HANDOFFS_DUE, BOT_STATES],
            args=[conversation_id],
        )

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
        check_after_ms: int,
        turn_started_ms: int,
        inflight_token: str | None = None,
        purpose: str = "",
        fields: Mapping[str, str | int | float] | None = None,
        counters: Mapping[str, int] | None = None,
        outbox_claim: Claim | None = None,
    ) -> bool:
        """Store the envelope (due now for the outbox pool) and the turn in flight,
        and take the turn off the queue if the claim still holds it. Only if the turn at
        n8n is still `inflight_token` ('' = none; None = whatever it is). `purpose`: the
        WhatsApp template its answer becomes if the window is closed (a proactive start's).
        `fields` are set on the conversation and `counters` added, only if it commits.
        With `outbox_claim` the envelope is queued leased to the caller (its score is the
        claim's lease): the caller POSTs it, with no claim of the outbox."""
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
                    STATS,
                    series.bucket_key(series.bucket_start(time.time())),
                    self.report_days.key(),
                ],
                args=[
                    consumed,
                    reply_token,
                    event_id,
                    payload,
                    now,
                    outbox_claim.lease if outbox_claim else now,
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
                    # Strings: Lua would write a large number in exponent form.
                    json.dumps({k: str(v) for k, v in (fields or {}).items()}),
                    json.dumps(dict(counters or {})),
                    series.KEPT_SECONDS,
                    "1" if outbox_claim else "0",
                ],
            )
            # Committed, the turn is off the queue (or re-scored by newer work): settled.
            claim.settled = claim.settled or bool(ok)
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

    async def outbox_delivered(self, claim: Claim) -> bool:
        """n8n took it. The item stays while its reply may still come, so the envelope
        can be sent again if that reply never arrives (`resend`); it is counted as
        forwarded. True when n8n had been failing (the flag is down now)."""
        claim.settled = True  # off the queue
        _, was_failing = cast(
            list[int],
            await self._outbox_delivered(
                keys=[
                    outbox_item_key(claim.member),
                    OUTBOX_DUE,
                    N8N_FAILING,
                    STATS,
                    series.bucket_key(series.bucket_start(time.time())),
                ],
                args=[
                    claim.member,
                    DELIVERED_KEPT_SECONDS * 1000,
                    self._r_ms,
                    now_ms(),
                    series.KEPT_SECONDS,
                ],
            ),
        )
        return bool(was_failing)

    async def resend(self, event_id: str) -> bool:
        """Send a delivered envelope to n8n again (its reply never came); False when the
        envelope is gone or already on its way."""
        return bool(await self._resend(keys=[outbox_item_key(event_id), OUTBOX_DUE], args=[
            event_id, now_ms()
        ]))  # fmt: skip

    async def outbox_failed(self, claim: Claim, error: str, next_due_ms: int | None) -> None:
        """Record a failed attempt; `next_due_ms` None parks the item as a dead letter.
        An item erased meanwhile is only taken off the queue."""
        claim.settled = True  # re-scored for its next try, or off the queue
        await self._outbox_failed(
            keys=[outbox_item_key(claim.member), OUTBOX_DUE, OUTBOX_DEAD],
            args=[
                claim.member,
                error[:500],
                "" if next_due_ms is None else next_due_ms,
                now_ms(),
            ],
        )
