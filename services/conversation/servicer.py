"""gRPC ⇄ domain for the conversation service."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceServicer
from services.common.errors import BridgeError, NotFound
from services.conversation.events import MessageEvent, parse_webhook
from services.conversation.kommo_form import nest, parse_form
from services.conversation.store import seen_key
from services.conversation.workers import Engine

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _parse(body: bytes, max_fields: int, subdomain: str) -> list[MessageEvent] | pb.IngestResult:
    try:
        parsed = parse_webhook(nest(parse_form(body, max_fields)), subdomain)
    except BridgeError as exc:
        return pb.IngestResult(outcome=pb.INGEST_OUTCOME_INVALID, error=str(exc))
    if parsed.ignored:
        log.debug("ignored %d webhook events of kinds not handled", parsed.ignored)
    return parsed.messages


class ConversationServicer(ConversationServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings

    async def IngestWebhooks(
        self, request_iterator: AsyncIterator[pb.IngestBatch], context: Context
    ) -> AsyncIterator[pb.IngestAck]:
        async for batch in request_iterator:
            yield await self.ingest_batch(batch)

    async def ingest_batch(self, batch: pb.IngestBatch) -> pb.IngestAck:
        results: list[pb.IngestResult | None] = []
        to_store: list[tuple[str, str]] = []
        owners: list[int] = []
        for index, body in enumerate(batch.bodies):
            parsed = _parse(body, self.settings.webhook_max_fields, self.settings.kommo_subdomain)
            if isinstance(parsed, pb.IngestResult):
                results.append(parsed)
                continue
            results.append(None)
            for event in parsed:
                to_store.append(
                    (
                        seen_key(event.message_id),
                        json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")),
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
        data = await self.store.conversation(conversation_id) if conversation_id else {}
        if not data:
            raise NotFound("conversation not found")
        pending = await self.store.inbox(conversation_id)
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
            pending_messages=len(pending),
        )
