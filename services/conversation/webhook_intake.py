"""Webhook bodies in, durable events out: the conversation service's side of the ack.

The edge streams batches of raw Kommo webhook bodies (IngestWebhooks); each body is
parsed (kommo_form.py, webhook_events.py) and its events stored once, for the whole
batch in one script (`ConversationStore.ingest`), before the edge answers Kommo. A
customer's message whose partition holds nothing waiting is applied in that same script
instead of being stored (stages/events.py, `EventStage.apply_here`), its turn started
here when it can start now. A body
that is not a Kommo webhook is refused with its reason; an item that is not valid is
skipped, the rest of its body kept. Leads and contacts Kommo says changed drop their
cached copies (the gateway's, then every replica's) after the batch is stored.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter

import grpc
from redis.exceptions import RedisError

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.errors import BridgeError
from services.common.grpc_server import client_metadata
from services.conversation.context import publish_changes
from services.conversation.engine import Engine
from services.conversation.envelope import text_fingerprint
from services.conversation.kommo_form import nest, parse_form
from services.conversation.store.conversations import ApplyHere, Incoming, Ingested
from services.conversation.store.keys import routing_key, seen_key
from services.conversation.webhook_events import (
    LeadEvent,
    MessageEvent,
    Refusal,
    Skipped,
    parse_webhook,
)

log = logging.getLogger(__name__)

# A batch of more webhooks than this is a flood: its messages go through the streams and
# are applied after the ack, so the ack keeps its share of the CPU (the apply of each
# message in the ack's own call is for the usual trickle, where it saves a read and a
# call a message).
_APPLY_HERE_MAX_WEBHOOKS = 8

# The webhook's answer waits for the gateway to drop its copies of what Kommo changed:
# well inside the ~2 s Kommo gives it, and a hung gateway costs no more than this.
_FORGET_DEADLINE_SECONDS = 0.5


def _parse(
    body: bytes, max_fields: int, subdomain: str, leads_wanted: bool
) -> tuple[list[MessageEvent | LeadEvent], list[Skipped], list[int], list[int]] | pb.IngestResult:
    """The events to store, the items skipped, and the leads and the contacts Kommo
    changed (edited, given another responsible user, deleted, moved to another stage);
    or the refusal of the whole body."""
    try:
        parsed = parse_webhook(nest(parse_form(body, max_fields)), subdomain)
    except Refusal as exc:
        _refused(exc.reason, exc.field)
        return pb.IngestResult(outcome=pb.INGEST_OUTCOME_INVALID, error=str(exc), reason=exc.reason)
    except BridgeError as exc:  # too many form fields
        _refused("too_many_fields", "")
        return pb.IngestResult(
            outcome=pb.INGEST_OUTCOME_INVALID, error=str(exc), reason="too_many_fields"
        )
    if parsed.ignored:
        log.debug("ignored %d webhook events of kinds not handled", parsed.ignored)
    for item in parsed.skipped:
        # The reason and where, never the values: an operator can see why without a
        # customer's text or phone reaching the log.
        log.warning(
            "webhook item skipped (%s): %s", item.reason, item.field, extra={"reason": item.reason}
        )
    events: list[MessageEvent | LeadEvent] = list(parsed.messages)
    if leads_wanted:
        # Lead events are stored only when they start proactive conversations.
        events.extend(parsed.leads)
    return events, parsed.skipped, parsed.changed_lead_ids, parsed.changed_contact_ids


def _incoming(
    event: MessageEvent | LeadEvent, request_id: str, here: ApplyHere | None = None
) -> Incoming:
    """An event as it is stored. A message not from the customer may be the echo of the
    bridge's own send: the ingest looks (its lead's conversation, its text). A
    customer's message may be applied by the ingest itself (`here`)."""
    stored = event.to_dict()
    stored["request_id"] = request_id
    payload = json.dumps(stored, ensure_ascii=False, separators=(",", ":"))
    if isinstance(event, LeadEvent):
        return Incoming(seen_key(event.dedupe_id), payload, routing_key(stored))
    echo = not event.from_customer and event.lead_id > 0
    return Incoming(
        seen_key(event.message_id),
        payload,
        routing_key(stored),
        lead=max(event.lead_id, 0),
        fingerprint=text_fingerprint(event.text) if echo else "",
        here=here,
    )


def _refused(reason: str, field: str) -> None:
    log.warning(
        "webhook refused (%s)%s", reason, f": {field}" if field else "", extra={"reason": reason}
    )


class WebhookIntake:
    """Batches of webhook bodies stored as events, one answer per body."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings

    async def ingest_batch(self, batch: pb.IngestBatch) -> pb.IngestAck:
        leads_wanted = bool(
            self.settings.proactive_on_lead_add or self.settings.proactive_on_status
        )
        results: list[pb.IngestResult | None] = []
        # Refused bodies and skipped items by reason, for /stats and the dashboard.
        refused: Counter[str] = Counter()
        skipped: dict[int, list[str]] = {}
        to_store: list[Incoming] = []
        owners: list[int] = []
        changed_leads: list[int] = []
        changed_contacts: list[int] = []
        prefix = batch.request_id_prefix or f"wh-{uuid.uuid4().hex[:8]}-{batch.seq}."
        events_stage = self.engine.events if len(batch.bodies) <= _APPLY_HERE_MAX_WEBHOOKS else None
        for index, body in enumerate(batch.bodies):
            parsed = _parse(
                body, self.settings.webhook_max_fields, self.settings.kommo_subdomain, leads_wanted
            )
            if isinstance(parsed, pb.IngestResult):
                results.append(parsed)
                refused[f"webhook_refused_{parsed.reason}"] += 1
                continue
            results.append(None)
            events, skipped_items, lead_ids, contact_ids = parsed
            changed_leads += lead_ids
            changed_contacts += contact_ids
            for item in skipped_items:
                refused[f"webhook_skipped_{item.reason}"] += 1
            if skipped_items:
                skipped[index] = [item.reason for item in skipped_items]
            for event in events:
                request = f"{prefix}{index}"
                here = (
                    events_stage.apply_here(event, request)
                    if events_stage is not None and isinstance(event, MessageEvent)
                    else None
                )
                to_store.append(_incoming(event, request, here))
                owners.append(index)
        valid = sum(1 for r in results if r is None)
        try:
            if valid:
                stored = await self.store.ingest(valid, to_store, refused)
            else:
                stored = []
                if refused:
                    await self.engine.bots.count_many(refused)
        except BaseException as exc:
            # The turns offered with the messages are not taken.
            for incoming in to_store:
                if incoming.here is not None:
                    self.engine.events.release_offer(incoming.here)
            if not isinstance(exc, RedisError):
                raise
            log.error("webhook batch not stored: %s", exc)
            unavailable = pb.IngestResult(
                outcome=pb.INGEST_OUTCOME_UNAVAILABLE, error="storage unavailable"
            )
            return pb.IngestAck(
                seq=batch.seq, results=[r if r is not None else unavailable for r in results]
            )
        for incoming in to_store:
            if incoming.here is not None:
                self.engine.events.applied_here(incoming.here)
        if changed_leads or changed_contacts:
            await self._forget_copies(changed_leads, changed_contacts)
        counts: dict[int, list[int]] = {}
        for owner, outcome in zip(owners, stored, strict=True):
            counts.setdefault(owner, [0, 0])[1 if outcome == Ingested.DUPLICATE else 0] += 1
        final = []
        for index, result in enumerate(results):
            if result is None:
                new, dup = counts.get(index, [0, 0])
                result = pb.IngestResult(
                    outcome=pb.INGEST_OUTCOME_STORED,
                    stored=new,
                    duplicates=dup,
                    skipped=skipped.get(index, ()),
                )
            final.append(result)
        return pb.IngestAck(seq=batch.seq, results=final)

    async def _forget_copies(self, lead_ids: list[int], contact_ids: list[int]) -> None:
        """Leads and contacts Kommo changed (edited, given another responsible user,
        deleted, moved to another stage, where their rules may differ): no copy of them
        answers a turn. The gateway's copies go first, then every replica's
        (services/conversation/context.py): a replica that drops its copy never reads the
        gateway's old one again. Best effort, after the batch is stored: the copies' own
        age (CONTEXT_CACHE_SECONDS, KOMMO_CACHE_TTL_SECONDS) bounds what a failure costs."""
        leads, contacts = sorted(set(lead_ids)), sorted(set(contact_ids))
        try:
            await self.engine.gateway.ForgetCopies(
                gw.ForgetCopiesRequest(lead_ids=leads, contact_ids=contacts),
                timeout=_FORGET_DEADLINE_SECONDS,
                metadata=client_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("the gateway's copies of changed leads not dropped: %s", exc.code().name)
        try:
            await publish_changes(self.store.redis, leads, contacts)
        except RedisError as exc:
            log.warning("the replicas' copies of changed leads not dropped: %s", exc)
