"""gRPC ⇄ domain for the conversation service: each RPC asks the engine, its stages or
the store, and answers in protobuf (rpc_messages.py). Webhook bodies are read and
stored by webhook_intake.py."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceServicer
from bridge.reports.v1 import reports_pb2 as rpt
from services.common.due_queue import Failure, now_ms
from services.common.errors import InvalidInput, NotFound
from services.common.grpc_server import serve_streamed
from services.common.report_store import ReportStore
from services.common.stream_calls import answer_of, answers
from services.conversation import envelope, reports, series
from services.conversation.context import publish_changes
from services.conversation.engine import Engine
from services.conversation.envelope import templates_json
from services.conversation.rpc_messages import (
    conversation_pb,
    dead_letter_pb,
    failing_pb,
    number,
    readable_conversation,
    rules_document,
    stats_bucket,
)
from services.conversation.rulebook import parse_rules
from services.conversation.store.operations import Operations
from services.conversation.store.privacy import Privacy
from services.conversation.template_sends import APPROVED, TemplateCheck
from services.conversation.templates import TemplateRef
from services.conversation.webhook_intake import WebhookIntake

log = logging.getLogger(__name__)

# /debug/conversations without an id shows the most recent ones, not the whole store.
_DEBUG_ALL_LIMIT = 200
# Failing work items listed by GetWorkStatus (the counts cover them all).
_FAILING_LISTED = 100
# What an operator must look at first, most urgent first.
_ATTENTION_ORDER = ("failing", "dead_letter", "waiting_for_n8n", "taken_over")

Context = grpc.aio.ServicerContext[Any, Any]


class ConversationServicer(ConversationServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings
        self.intake = WebhookIntake(engine)
        self.ops = Operations(engine.store.redis, engine.store.retention_seconds)
        self.privacy = Privacy(
            engine.store.redis, engine.store.retention_seconds, engine.store.event_partitions
        )

    async def IngestWebhooks(
        self, request_iterator: AsyncIterator[pb.IngestBatch], context: Context
    ) -> AsyncIterator[pb.IngestAck]:
        async for batch in request_iterator:
            yield await self.intake.ingest_batch(batch)

    async def SendReplies(
        self, request_iterator: AsyncIterator[pb.SendReplyCall], context: Context
    ) -> AsyncIterator[pb.SendReplyAnswer]:
        """SendReply's calls as the edge streams them (services.common.stream_calls)."""
        async for answer in answers(request_iterator, self._answer_reply):
            yield answer

    async def _answer_reply(self, call: pb.SendReplyCall) -> pb.SendReplyAnswer:
        outcome = await serve_streamed(
            "SendReply",
            call.request_id,
            call.timeout_seconds,
            lambda: self.SendReply(call.request, None),  # type: ignore[arg-type]
        )
        return answer_of(pb.SendReplyAnswer(), call.id, outcome)

    async def SendReply(
        self, request: pb.SendReplyRequest, context: Context
    ) -> pb.SendReplyResponse:
        status, conversation_id, job_id, lead_id = await self.engine.replies.send(
            reply_token=request.reply_token,
            conversation_id=request.conversation_id,
            lead_id=request.lead_id,
            text=request.text,
            note=request.note,
            idempotency_key=request.idempotency_key,
            handoff=request.handoff,
            handoff_reason=request.handoff_reason,
            parts=list(request.parts),
            template=request.template,
            variables=dict(request.variables),
        )
        return pb.SendReplyResponse(
            status=status, conversation_id=conversation_id, delivery_id=job_id, lead_id=lead_id
        )

    async def GetWindow(self, request: pb.GetWindowRequest, context: Context) -> pb.Window:
        if request.lead_id <= 0:
            raise InvalidInput("lead_id must be a positive integer")
        found = await self.store.conversation_by_lead(request.lead_id)
        conversation = await self.store.conversation(found) if found else {}
        if not conversation:
            # Not stored: a lead the bridge has no conversation with yet.
            conversation = {"lead_id": str(request.lead_id)}
        state = await self.engine.templates.window(conversation, time.time())
        configured = (await self.engine.rules.current()).rules.templates
        return pb.Window(
            origin=state.origin,
            open=state.open,
            open_until=state.open_until or 0.0,
            has_window=state.applies,
            templates=[
                pb.TemplateOffer(purpose=offer["purpose"], variables=offer["variables"])
                for offer in templates_json(configured)
            ],
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
        pending = await self.ops.pending_counts([r.get("id", "") for r in chosen])
        listed = [readable_conversation(r, n) for r, n in zip(chosen, pending, strict=True)]
        conversations = [c for c in listed if c is not None]
        return pb.ListConversationsResponse(
            conversations=conversations,
            total=len(rows),
            page=page,
            page_size=page_size,
            skipped=len(listed) - len(conversations),
        )

    async def DebugConversations(
        self, request: pb.DebugConversationsRequest, context: Context
    ) -> pb.DebugConversationsResponse:
        now = time.time()
        if request.conversation_id:
            if not await self.store.conversation(request.conversation_id):
                raise NotFound(f"conversation {request.conversation_id} not found")
            dump: Any = self._with_window(await self.ops.dump(request.conversation_id), now)
        else:
            ids = await self.ops.conversation_ids(limit=_DEBUG_ALL_LIMIT)
            dumps = []
            for conversation_id in ids:
                try:
                    dumps.append(self._with_window(await self.ops.dump(conversation_id), now))
                except ValueError as exc:  # a record that is not JSON: left out, not fatal
                    log.warning("conversation %s unreadable, left out: %s", conversation_id, exc)
            dump = {"conversations": dumps, "skipped": len(ids) - len(dumps)}
        return pb.DebugConversationsResponse(json=json.dumps(dump, ensure_ascii=False))

    def _with_window(self, dump: dict[str, Any], now: float) -> dict[str, Any]:
        """WhatsApp's 24-hour window as it stands now, computed from what the conversation
        holds (its origin, when its customer last wrote): whether free text reaches them."""
        policy = self.settings.window_policy
        dump["window"] = envelope.conversation_window(policy, dump["conversation"], now).as_json()
        return dump

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
        try:
            await publish_changes(self.store.redis, everything=True)
        except RedisError as exc:
            log.warning("copies not dropped after the reset (they age out): %s", exc)
        return pb.ResetConversationsResponse(conversations=deleted, keys=keys)

    async def GetReport(self, request: rpt.GetReportRequest, context: Context) -> rpt.Report:
        return await ReportStore(self.store.redis, self.store.report_days, reports.FIGURES).answer(
            request
        )

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.Stats:
        by_state = await self.store.state_counts()
        pending, dead = await self.ops.queue_sizes()
        if request.series_hours > series.MAX_HOURS:
            raise InvalidInput(f"series_hours must be at most {series.MAX_HOURS}")
        # One read of the day's buckets: the median and the window's quantiles come from
        # the same histograms, so they agree whenever they cover the same replies.
        day = await self.engine.bots.time_series(series.MAX_HOURS)
        buckets: list[series.Bucket] = []
        window = None
        if request.series_hours:
            recent = day.last(request.series_hours)
            buckets, window = recent.buckets(), recent.window()
        return pb.Stats(
            conversations_by_state=by_state,
            counters=await self.engine.bots.counters(),
            median_reply_seconds=day.window().reply_p50_seconds,
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

    async def GetBotRules(
        self, request: pb.GetBotRulesRequest, context: Context
    ) -> pb.BotRulesDocument:
        return rules_document(await self.engine.rules.current())

    async def PutBotRules(
        self, request: pb.PutBotRulesRequest, context: Context
    ) -> pb.BotRulesDocument:
        expected = request.expected_version if request.HasField("expected_version") else None
        configured = parse_rules(request.rules_json).templates
        if configured:
            await self._check_templates(configured)
        return rules_document(await self.engine.rules.put(request.rules_json, expected))

    async def _check_templates(self, configured: dict[str, TemplateRef]) -> None:
        """Templates WhatsApp has not approved are refused at PUT, naming each; when
        Kommo cannot say (unreachable, a plan without templates), they are accepted and
        /health says so while they stay unchecked."""
        try:
            statuses = await self.engine.templates.statuses(fresh=True)
        except grpc.aio.AioRpcError as exc:
            log.warning("WhatsApp templates not checked at PUT: %s", exc.code().name)
            return
        if not statuses:
            return
        problems = [
            TemplateCheck(purpose, ref, statuses.get(ref.template_id, "missing")).problem()
            for purpose, ref in sorted(configured.items())
            if ref.template_id is not None and statuses.get(ref.template_id) != APPROVED
        ]
        if problems:
            raise InvalidInput("bot rules: templates: " + "; ".join(problems))

    async def GetTemplates(self, request: pb.GetTemplatesRequest, context: Context) -> pb.Templates:
        return pb.Templates(templates=await self.engine.proactive.templates())

    async def SetTemplate(self, request: pb.SetTemplateRequest, context: Context) -> pb.Templates:
        await self.engine.proactive.set_template(request.trigger, request.text)
        return pb.Templates(templates=await self.engine.proactive.templates())

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        limit = request.limit or 100
        letters = [dead_letter_pb(f) for f in await self.engine.failures.dead(limit)]
        for event_id, parked_at, item in await self.ops.dead_letters(limit):
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
                    kind="n8n_delivery",
                    id=event_id,
                )
            )
        letters.sort(key=lambda d: -d.parked_at)
        return pb.ListDeadLettersResponse(dead_letters=letters[:limit])

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: Context
    ) -> pb.ReplayDeadLetterResponse:
        letter_id = request.id or request.event_id
        if not (await self.engine.failures.replay(letter_id) or await self.ops.replay(letter_id)):
            raise NotFound(f"no dead letter {letter_id}")
        log.info("dead letter replayed", extra={"dead_letter": letter_id})
        return pb.ReplayDeadLetterResponse(event_id=request.event_id, id=letter_id)

    async def EraseData(
        self, request: pb.EraseDataRequest, context: Context
    ) -> pb.EraseDataResponse:
        if (request.lead_id > 0) == (request.contact_id > 0):
            raise InvalidInput("exactly one of lead_id or contact_id is required")
        erasure = await self.privacy.erase(request.lead_id, request.contact_id)
        # No replica may answer from its copy of what was erased.
        await publish_changes(self.engine.store.redis, erasure.lead_ids, erasure.contact_ids)
        log.warning(
            "personal data erased",
            extra={
                "erased": dict(erasure.counts),
                "conversations": erasure.counts["conversations"],
            },
        )
        return pb.EraseDataResponse(
            erased=dict(erasure.counts),
            lead_ids=sorted(erasure.lead_ids),
            contact_ids=sorted(erasure.contact_ids),
            delivery_keys=sorted(erasure.delivery_keys),
        )

    async def GetWorkStatus(
        self, request: pb.GetWorkStatusRequest, context: Context
    ) -> pb.WorkStatus:
        alert_ms = int(self.settings.dead_letter_alert_seconds * 1000)
        # 0 = dead letters never alert: count those parked from a moment that never comes.
        since = now_ms() - alert_ms if alert_ms else now_ms() + 1
        counts = await self.engine.failures.counts(since)
        _, outbox_dead = await self.ops.queue_sizes()
        outbox_recent = await self.ops.dead_letters_since(since)
        failing = await self.engine.failures.failing()
        status = pb.WorkStatus(
            failing=counts.failing,
            dead_letters=counts.dead + outbox_dead,
            dead_letters_recent=counts.dead_recent + outbox_recent,
            recent_seconds=self.settings.dead_letter_alert_seconds,
            failing_items=[failing_pb(f) for f in failing[:_FAILING_LISTED]],
        )
        status.template_problems.extend(await self._template_problems())
        if request.attention_limit:
            attention, skipped = await self._attention(failing, min(request.attention_limit, 500))
            status.attention.extend(attention)
            status.skipped = skipped
        return status

    async def _template_problems(self) -> list[str]:
        """The configured WhatsApp templates that cannot go, as Kommo says (its answer is
        cached by the gateway): "" for none; Kommo unreachable is said once, not per
        template."""
        try:
            checks = await self.engine.templates.check_all()
        except grpc.aio.AioRpcError as exc:
            return [f"WhatsApp templates not checked: Kommo answered {exc.code().name}"]
        return [check.problem() for check in checks if not check.approved]

    async def _attention(
        self, failing: list[Failure], limit: int
    ) -> tuple[list[pb.Attention], int]:
        """One line per conversation an operator should look at, most urgent first:
        failing work, dead letters, turns waiting for n8n, conversations taken over."""
        found: dict[str, tuple[str, str, float]] = {}

        def note(conversation_id: str, reason: str, detail: str, since: float) -> None:
            if conversation_id and conversation_id not in found:
                found[conversation_id] = (reason, detail, since)

        for f in failing:
            note(f.conversation_id, "failing", f"{f.kind}: {f.error}", f.first_failed_at)
        for f in await self.engine.failures.dead(limit):
            note(f.conversation_id, "dead_letter", f"{f.kind}: {f.error}", f.parked_at)
        for _, parked_at, item in await self.ops.dead_letters(limit):
            detail = f"n8n_delivery: {item.get('last_error', '')}"
            note(item.get("conversation_id", ""), "dead_letter", detail, parked_at)
        rows = {
            r.get("id", ""): r
            for r in await self.ops.conversations(await self.ops.conversation_ids())
        }
        for conversation_id, row in rows.items():
            if row.get("inflight_token"):
                since = number(row.get("inflight_since")) / 1000
                note(conversation_id, "waiting_for_n8n", "", since)
            elif row.get("bot_state", "active") != "active":
                detail = f"{row.get('paused_by', '')}: {row.get('paused_reason', '')}".strip(": ")
                note(conversation_id, "taken_over", detail, number(row.get("paused_at")) / 1000)
        chosen = sorted(found.items(), key=lambda kv: (_ATTENTION_ORDER.index(kv[1][0]), kv[1][2]))[
            :limit
        ]
        pending = await self.ops.pending_counts([conversation_id for conversation_id, _ in chosen])
        items, skipped = [], 0
        for (conversation_id, (reason, detail, since)), n in zip(chosen, pending, strict=True):
            record = rows.get(conversation_id)
            conversation = readable_conversation(record, n) if record else None
            skipped += 1 if record and conversation is None else 0
            items.append(
                pb.Attention(
                    conversation=conversation,
                    conversation_id=conversation_id,
                    reason=reason,
                    detail=detail,
                    since=since,
                )
            )
        return items, skipped
