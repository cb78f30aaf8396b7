"""What operators look at: active conversations, stats, dead letters, debug, reset."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.grpc_server import client_metadata
from services.edge_api.deps import API_KEY, DEBUG, ClientsDep
from services.edge_api.ids import KommoIdQuery

router = APIRouter(dependencies=API_KEY)


def conversation_json(c: conv.Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "lead_id": c.lead_id or None,
        "contact_id": c.contact_id or None,
        "chat_id": c.chat_id or None,
        "talk_id": c.talk_id or None,
        "bot_state": c.bot_state,
        "paused_by": c.paused_by or None,
        "paused_reason": c.paused_reason or None,
        "resumes_at": c.resumes_at or None,
        "awaiting_reply": c.awaiting_reply,
        "pending_messages": c.pending_messages,
        "created_at": c.created_at or None,
        "last_message_at": c.last_message_at or None,
    }


@router.get("/conversations/active", tags=["conversations"])
async def active_conversations(
    clients: ClientsDep,
    bot_state: Annotated[Literal["active", "paused"] | None, Query()] = None,
    lead_id: KommoIdQuery = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Conversations, most recent first; filter by bot state or lead."""
    answer = await clients.conversation.ListConversations(
        conv.ListConversationsRequest(
            bot_state=bot_state or "",
            lead_id=lead_id or 0,
            page=page,
            page_size=page_size,
        ),
        metadata=client_metadata(),
    )
    return {
        "conversations": [conversation_json(c) for c in answer.conversations],
        "total": answer.total,
        "page": answer.page,
        "page_size": answer.page_size,
        # Records of this page the service could not read (and logged): left out.
        "skipped": answer.skipped,
    }


@router.get("/stats", tags=["status"])
async def stats(
    clients: ClientsDep,
    hours: Annotated[
        int, Query(ge=0, le=24, description="also the last hours in five-minute buckets")
    ] = 0,
) -> dict[str, Any]:
    """Conversations by state, messages in and out, forwards, retries, dead letters,
    takeovers and handoffs, and the median time to reply; with `hours`, the same over
    time with the reply latency of each bucket."""
    answer = await clients.conversation.GetStats(
        conv.GetStatsRequest(series_hours=hours), metadata=client_metadata()
    )
    return {**stats_json(answer), **series_json(answer)} if hours else stats_json(answer)


TAKEOVERS = ("takeovers_command", "takeovers_auto", "takeovers_api")


def stats_json(answer: conv.Stats) -> dict[str, Any]:
    counters = dict(answer.counters)
    return {
        "conversations": dict(answer.conversations_by_state),
        "messages": {
            "in": counters.get("messages_customer", 0),
            "out": counters.get("messages_out", 0),
            "from_people": counters.get("messages_human", 0),
            "commands": counters.get("messages_command", 0),
            # Recorded in the history, not answered: Kommo redelivered it past
            # MESSAGE_MAX_AGE_SECONDS, or no lead in Kommo could take the answer.
            "too_old": counters.get("messages_too_old", 0),
            "without_lead": counters.get("messages_without_lead", 0),
        },
        "n8n": {
            "forwarded": counters.get("forwarded", 0),
            "retried": counters.get("retried", 0),
            "dead_lettered": counters.get("dead_lettered", 0),
            "outbox_pending": answer.outbox_pending,
            "dead_letters": answer.dead_letters,
        },
        "takeovers": {
            "by_command": counters.get("takeovers_command", 0),
            "automatic": counters.get("takeovers_auto", 0),
            "by_api": counters.get("takeovers_api", 0),
        },
        "handoffs": {
            "asked_by_ai": counters.get("handoffs_ai", 0),
            "n8n_silent": counters.get("handoffs_timeout", 0),
        },
        "resumes": {
            "by_command": counters.get("resumes_command", 0),
            "automatic": counters.get("resumes_auto", 0),
            "by_api": counters.get("resumes_api", 0),
        },
        # Customer messages by what the bot rules decided on their turn.
        "decisions": {
            "answered": counters.get("decision_answer", 0),
            "ignored": counters.get("decision_ignore", 0),
            "not_triggered": counters.get("decision_not_triggered", 0),
            "handed_off_by_keyword": counters.get("decision_finish", 0),
            "held_out_of_hours": counters.get("decision_hold", 0),
            "out_of_hours_replies": counters.get("out_of_hours_replies", 0),
        },
        # WhatsApp's 24-hour window: templates sent, replies that found it closed and
        # what became of them.
        "whatsapp": {
            "template_sends": counters.get("template_sends", 0),
            "replies_window_closed": counters.get("replies_window_closed", 0),
            "replies_waiting_for_customer": counters.get("replies_waiting_for_customer", 0),
            "late_replies_to_vendedor": counters.get("late_replies_to_vendedor", 0),
            # Sends kept because no approved template could go, by why (each try counts).
            "templates_refused": _by_reason(counters, "template_refused_"),
        },
        # Kommo webhooks the bridge refused whole, and parts of stored ones it skipped,
        # by reason (the conversation service's log says which field).
        "webhooks": {
            "refused": _by_reason(counters, "webhook_refused_"),
            "items_skipped": _by_reason(counters, "webhook_skipped_"),
        },
        "median_reply_seconds": round(answer.median_reply_seconds, 3),
        "counters": counters,
    }


def _by_reason(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def bucket_json(b: conv.StatsBucket) -> dict[str, Any]:
    counters = dict(b.counters)
    return {
        "start": b.start,
        "messages_in": counters.get("messages_customer", 0),
        "messages_out": counters.get("messages_out", 0),
        "takeovers": sum(counters.get(name, 0) for name in TAKEOVERS),
        "handoffs": counters.get("handoffs_ai", 0) + counters.get("handoffs_timeout", 0),
        "dead_lettered": counters.get("dead_lettered", 0),
        "replies": b.replies,
        "reply_mean_seconds": round(b.reply_mean_seconds, 3),
        "reply_p50_seconds": round(b.reply_p50_seconds, 3),
        "reply_p95_seconds": round(b.reply_p95_seconds, 3),
        "counters": counters,
    }


def series_json(answer: conv.Stats) -> dict[str, Any]:
    """The buckets, oldest first, with the figures the dashboard draws."""
    buckets = [bucket_json(b) for b in answer.series]
    return {
        "bucket_seconds": answer.bucket_seconds,
        "series": buckets,
        "window": bucket_json(answer.window),
    }


@router.get("/dead-letters", tags=["conversations"])
async def dead_letters(
    clients: ClientsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Work parked after failing, newest first, with the reason: envelopes n8n never took
    (`kind` "n8n_delivery") and any other work that kept failing (a turn, a reply, a
    resume, a handoff, a notification, a proactive start, a webhook event). Replay one
    by its `id` once the cause is fixed."""
    answer = await clients.conversation.ListDeadLetters(
        conv.ListDeadLettersRequest(limit=limit), metadata=client_metadata()
    )
    return {
        "dead_letters": [
            {
                "id": d.id or d.event_id,
                "kind": d.kind or "n8n_delivery",
                "event_id": d.event_id or None,
                "event": d.event or None,
                "conversation_id": d.conversation_id or None,
                "url": d.url or None,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "first_failed_at": d.first_failed_at or None,
                "parked_at": d.parked_at,
            }
            for d in answer.dead_letters
        ]
    }


@router.post("/dead-letters/{event_id}/replay", tags=["conversations"])
async def replay_dead_letter(
    event_id: Annotated[
        str,
        Path(
            min_length=1,
            max_length=100,
            description="the dead letter's `id` (an n8n delivery's is its event_id)",
        ),
    ],
    clients: ClientsDep,
) -> dict[str, str]:
    """Put a dead letter back where it came from, due now, its tries counted from zero."""
    await clients.conversation.ReplayDeadLetter(
        conv.ReplayDeadLetterRequest(id=event_id), metadata=client_metadata()
    )
    return {"id": event_id, "event_id": event_id, "status": "queued"}


@router.get("/debug/conversations", tags=["status"], dependencies=DEBUG)
async def debug_conversations(
    clients: ClientsDep,
    conversation_id: Annotated[str | None, Query(max_length=100)] = None,
) -> Any:
    """Everything the bridge holds about one conversation, or the most recent ones."""
    answer = await clients.conversation.DebugConversations(
        conv.DebugConversationsRequest(conversation_id=conversation_id or ""),
        metadata=client_metadata(),
    )
    return json.loads(answer.json)


@router.delete("/reset/conversations", tags=["test & debug"], dependencies=DEBUG)
async def reset_conversations(
    clients: ClientsDep,
    conversation_id: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    """Forget one conversation, or all of them; says how many were deleted."""
    answer = await clients.conversation.ResetConversations(
        conv.ResetConversationsRequest(conversation_id=conversation_id or ""),
        metadata=client_metadata(),
    )
    return {
        "deleted_conversations": answer.conversations,
        "deleted_keys": answer.keys,
        "conversation_id": conversation_id,
    }
