"""The conversation service's answers in protobuf, built from the records in Redis."""

from __future__ import annotations

import logging

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.due_queue import Failure
from services.conversation import series
from services.conversation.rulebook import InForce

log = logging.getLogger(__name__)


def number(value: str | None) -> int:
    """A record's number field; 0 when it is missing or not a number."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def readable_conversation(data: dict[str, str], pending: int) -> pb.Conversation | None:
    """The conversation as protobuf, or None (logged) when its record cannot be read:
    a lead id beyond int64, a field that is not a number. One bad record never breaks
    a listing."""
    try:
        return conversation_pb(data, pending)
    except (KeyError, ValueError, TypeError) as exc:
        log.warning(
            "conversation %s left out of a listing, its record is unreadable: %s",
            data.get("id", "?"),
            f"{type(exc).__name__}: {str(exc)[:200]}",
        )
        return None


def failing_pb(f: Failure) -> pb.FailingWork:
    return pb.FailingWork(
        id=f.id,
        kind=f.kind,
        conversation_id=f.conversation_id,
        attempts=f.attempts,
        error=f.error,
        first_failed_at=f.first_failed_at,
        last_failed_at=f.last_failed_at,
        next_attempt_at=f.next_at,
        parked_at=f.parked_at,
    )


def dead_letter_pb(f: Failure) -> pb.DeadLetter:
    return pb.DeadLetter(
        event_id=f.member if f.kind == "n8n_delivery" else "",
        conversation_id=f.conversation_id,
        attempts=f.attempts,
        last_error=f.error,
        parked_at=f.parked_at,
        kind=f.kind,
        id=f.id,
        first_failed_at=f.first_failed_at,
    )


def conversation_pb(data: dict[str, str], pending: int) -> pb.Conversation:
    return pb.Conversation(
        id=data["id"],
        lead_id=int(data.get("lead_id") or 0),
        contact_id=int(data.get("contact_id") or 0),
        chat_id=data.get("chat_id", ""),
        talk_id=int(data.get("talk_id") or 0),
        bot_state=data.get("bot_state", "active"),
        created_at=int(data.get("created_at") or 0) / 1000,
        updated_at=int(data.get("updated_at") or 0) / 1000,
        awaiting_reply=bool(data.get("inflight_token")),
        pending_messages=pending,
        paused_by=data.get("paused_by", ""),
        paused_reason=data.get("paused_reason", ""),
        resumes_at=int(data.get("resumes_at") or 0) / 1000,
        last_message_at=int(data.get("updated_at") or 0) / 1000,
    )


def stats_bucket(b: series.Bucket) -> pb.StatsBucket:
    return pb.StatsBucket(
        start=b.start,
        counters=b.counters,
        replies=b.replies,
        reply_mean_seconds=b.reply_mean_seconds,
        reply_p50_seconds=b.reply_p50_seconds,
        reply_p95_seconds=b.reply_p95_seconds,
    )


def rules_document(rules: InForce) -> pb.BotRulesDocument:
    return pb.BotRulesDocument(
        # What each scope named, and only that: a field a pipeline or stage left out
        # keeps merging over the wider scope's (rules_document.merge_nested).
        rules_json=rules.rules.model_dump_json(exclude_unset=True),
        version=rules.version,
        source=rules.source,
        updated_at=rules.updated_at,
    )
