"""gRPC ⇄ domain for the conversation service."""

from __future__ import annotations

import json
import logging
import statistics
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceServicer
from services.common.errors import BridgeError, InvalidInput, NotFound
from services.conversation import series
from services.conversation.events import LeadEvent, MessageEvent, parse_webhook
from services.conversation.kommo_form import nest, parse_form
from services.conversation.store import Operations, seen_key
from services.conversation.workers import Engine

log = logging.getLogger(__name__)

# /debug/conversations without an id shows the most recent ones, not the whole store.
_DEBUG_ALL_LIMIT = 200

Context = grpc.aio.ServicerContext[Any, Any]


def _parse(
    body: bytes, max_fields: int, subdomain: str, leads_wanted: bool
) -> list[MessageEvent | LeadEvent] | pb.IngestResult:
    try:
        parsed = parse_webhook(nest(parse_form(body, max_fields)), subdomain)
    except BridgeError as exc:
        return pb.IngestResult(outcome=pb.INGEST_OUTCOME_INVALID, error=str(exc))
    if parsed.ignored:
        log.debug("ignored %d webhook events of kinds not handled", parsed.ignored)
    events: list[MessageEvent | LeadEvent] = list(parsed.messages)
    if leads_wanted:
        # Lead events only matter when they start proactive conversations.
        events.extend(parsed.leads)
    return events


class ConversationServicer(ConversationServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings
        self.ops = Operations(engine.store.redis)

    async def IngestWebhooks(
        self, request_iterator: AsyncIterator[pb.IngestBatch], context: Context
    ) -> AsyncIterator[pb.IngestAck]:
        async for batch in request_iterator:
            yield await self.ingest_batch(batch)

    async def ingest_batch(self, batch: pb.IngestBatch) -> pb.IngestAck:
        leads_wanted = bool(
            self.settings.proactive_on_lead_add or self.settings.proactive_on_status
        )
        results: list[pb.IngestResult | None] = []
        to_store: list[tuple[str, str]] = []
        owners: list[int] = []
        prefix = batch.request_id_prefix or f"wh-{uuid.uuid4().hex[:8]}-{batch.seq}."
        for index, body in enumerate(batch.bodies):
            parsed = _parse(
                body, self.settings.webhook_max_fields, self.settings.kommo_subdomain, leads_wanted
            )
            if isinstance(parsed, pb.IngestResult):
                results.append(parsed)
                continue
            results.append(None)
            for event in parsed:
                stored_event = event.to_dict()
                stored_event["request_id"] = f"{prefix}{index}"
                to_store.append(
                    (
                        seen_key(
                            event.message_id if isinstance(event, MessageEvent) else event.dedupe_id
                        ),
                        json.dumps(stored_event, ensure_ascii=False, separators=(",", ":")),
                    )
                )
                owners.append(index)
        valid = sum(1 for r in results if r is None)
        try:
            stored = await self.store.ingest(valid, to_store) if valid else []
        except RedisError as exc:
            log.error("webhook batch not stored: %s", exc)
            unavailable = pb.IngestResult(
                outcome=pb.INGEST_OUTCOME_UNAVAILABLE, error="storage unavailable"
            )
            return pb.IngestAck(
                seq=batch.seq, results=[r if r is not None else unavailable for r in results]
            )
        counts: dict[int, list[int]] = {}
        for owner, is_new in zip(owners, stored, strict=True):
            counts.setdefault(owner, [0, 0])[0 if is_new else 1] += 1
        final = []
        for index, result in enumerate(results):
            if result is None:
                new, dup = counts.get(index, [0, 0])
                result = pb.IngestResult(
                    outcome=pb.INGEST_OUTCOME_STORED, stored=new, duplicates=dup
                )
            final.append(result)
        return pb.IngestAck(seq=batch.seq, results=final)

    async def SendReply(
        self, request: pb.SendReplyRequest, context: Context
    ) -> pb.SendReplyResponse:
        status, conversation_id, job_id, lead_id = await self.engine.send_reply(
            reply_token=request.reply_token,
            conversation_id=request.conversation_id,
            lead_id=request.lead_id,
            text=request.text,
            note=request.note,
            idempotency_key=request.idempotency_key,
            handoff=request.handoff,
            handoff_reason=request.handoff_reason,
        )
        return pb.SendReplyResponse(
            status=status, conversation_id=conversation_id, delivery_id=job_id, lead_id=lead_id
        )

    async def GetWebhookStatus(
        self, request: pb.GetWebhookStatusRequest, context: Context
    ) -> pb.WebhookStatus:
        last, total = await self.store.webhook_status()
        return pb.WebhookStatus(last_received_at=last, received_total=total)

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context
    ) -> pb.Conversation:
        conversation_id = request.conversation_id
        if not conversation_id and request.lead_id:
            conversation_id = await self.store.conversation_by_lead(request.lead_id) or ""
        if not conversation_id and request.contact_id:
            conversation_id = await self.store.conversation_by_contact(request.contact_id) or ""
        data = await self.store.conversation(conversation_id) if conversation_id else {}
        if not data:
            raise NotFound("conversation not found")
        [pending] = await self.ops.pending_counts([conversation_id])
        return conversation_pb(data, pending)

    async def BotControl(self, request: pb.BotControlRequest, context: Context) -> pb.BotStatus:
        control = self.engine.bot
        conversation_id = await control.find(request.ref)
        by = request.by or "API"
        if request.action == "status":
            return await control.status(conversation_id)
        if request.action == "pause":
            outcome = await control.pause(
                conversation_id,
                by,
                request.reason or "pausado pela API",
                "takeovers_api",
                request.pause_seconds,
            )
        elif request.action == "resume":
            outcome = await control.resume(
                conversation_id, by, request.reason or "reativado pela API", "resumes_api"
            )
        else:
            raise InvalidInput("action must be pause, resume or status")
        return await control.status(conversation_id, outcome)

    async def VendedorCommand(
        self, request: pb.VendedorCommandRequest, context: Context
    ) -> pb.BotStatus:
        by = request.vendedor_name or (
            f"vendedor {request.vendedor_id}" if request.vendedor_id else "vendedor"
        )
        status = await self.engine.bot.command(request.text, by, request.conversation_id, "command")
        if status is None:
            raise InvalidInput(
                f"not a command: use {self.settings.bot_assume_command} <lead id> or "
                f"{self.settings.bot_release_command} <lead id>"
            )
        return status

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        page_size = min(request.page_size or 50, 500)
        page = max(request.page, 1)
        if request.lead_id:
            found = await self.store.conversation_by_lead(request.lead_id)
            ids = [found] if found else []
        else:
            ids = await self.ops.conversation_ids()
        rows = await self.ops.conversations(ids)
        if request.bot_state:
            rows = [r for r in rows if r.get("bot_state", "active") == request.bot_state]
        chosen = rows[(page - 1) * page_size : page * page_size]
        pending = await self.ops.pending_counts([r["id"] for r in chosen])
        return pb.ListConversationsResponse(
            conversations=[conversation_pb(r, n) for r, n in zip(chosen, pending, strict=True)],
            total=len(rows),
            page=page,
            page_size=page_size,
        )

    async def DebugConversations(
        self, request: pb.DebugConversationsRequest, context: Context
    ) -> pb.DebugConversationsResponse:
        if request.conversation_id:
            if not await self.store.conversation(request.conversation_id):
                raise NotFound(f"conversation {request.conversation_id} not found")
            dump: Any = await self.ops.dump(request.conversation_id)
        else:
            ids = await self.ops.conversation_ids(limit=_DEBUG_ALL_LIMIT)
            dump = {"conversations": [await self.ops.dump(i) for i in ids]}
        return pb.DebugConversationsResponse(json=json.dumps(dump, ensure_ascii=False))

    async def ResetConversations(
        self, request: pb.ResetConversationsRequest, context: Context
    ) -> pb.ResetConversationsResponse:
        if request.conversation_id:
            if not await self.store.conversation(request.conversation_id):
                raise NotFound(f"conversation {request.conversation_id} not found")
            ids = [request.conversation_id]
        else:
            ids = await self.ops.conversation_ids(limit=1_000_000)
        deleted, keys = await self.ops.reset(ids)
        log.warning("conversations reset", extra={"conversations": deleted, "keys": keys})
        return pb.ResetConversationsResponse(conversations=deleted, keys=keys)

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.Stats:
        rows = await self.ops.conversations(await self.ops.conversation_ids())
        by_state = Counter(r.get("bot_state", "active") for r in rows)
        by_state["awaiting_reply"] = sum(1 for r in rows if r.get("inflight_token"))
        samples = await self.engine.bots.reply_seconds()
        pending, dead = await self.ops.queue_sizes()
        if request.series_hours > series.MAX_HOURS:
            raise InvalidInput(f"series_hours must be at most {series.MAX_HOURS}")
        buckets: list[series.Bucket] = []
        window = None
        if request.series_hours:
            buckets, window = await self.engine.bots.time_series(request.series_hours)
        return pb.Stats(
            conversations_by_state=dict(by_state),
            counters=await self.engine.bots.counters(),
            median_reply_seconds=statistics.median(samples) if samples else 0.0,
            outbox_pending=pending,
            dead_letters=dead,
            series=[stats_bucket(b) for b in buckets],
            bucket_seconds=series.BUCKET_SECONDS,
            window=stats_bucket(window) if window else None,
        )

    async def StartProactive(
        self, request: pb.StartProactiveRequest, context: Context
    ) -> pb.StartProactiveResponse:
        started = await self.engine.proactive.start(request.lead_id, request.trigger)
        return pb.StartProactiveResponse(
            conversation_id=started.conversation_id,
            created=started.created,
            status=started.status,
            scheduled_for=started.scheduled_for,
        )

    async def GetTemplates(self, request: pb.GetTemplatesRequest, context: Context) -> pb.Templates:
        return pb.Templates(templates=await self.engine.proactive.templates())

    async def SetTemplate(self, request: pb.SetTemplateRequest, context: Context) -> pb.Templates:
        await self.engine.proactive.set_template(request.trigger, request.text)
        return pb.Templates(templates=await self.engine.proactive.templates())

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        letters = []
        for event_id, parked_at, item in await self.ops.dead_letters(request.limit or 100):
            try:
                event = json.loads(item.get("payload", "{}")).get("event", "")
            except ValueError:
                event = ""
            letters.append(
                pb.DeadLetter(
                    event_id=event_id,
                    conversation_id=item.get("conversation_id", ""),
                    url=item.get("url", ""),
                    attempts=int(item.get("attempts") or 0),
                    last_error=item.get("last_error", ""),
                    parked_at=parked_at,
                    event=event,
                )
            )
        return pb.ListDeadLettersResponse(dead_letters=letters)

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: Context
    ) -> pb.ReplayDeadLetterResponse:
        if not await self.ops.replay(request.event_id):
            raise NotFound(f"no dead letter {request.event_id}")
        return pb.ReplayDeadLetterResponse(event_id=request.event_id)


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
