"""gRPC ⇄ domain for the scheduling service, and its delivery pool to n8n."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.reports.v1 import reports_pb2 as rpt
from bridge.scheduling.v1 import scheduling_pb2 as pb
from bridge.scheduling.v1.scheduling_pb2_grpc import SchedulingServiceServicer
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.due_queue import Claim, now_ms
from services.common.envelopes import SCHEDULING_REQUESTED, n8n_envelope
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import client_metadata
from services.common.kommo_ids import KOMMO_ID_MAX, is_kommo_id
from services.common.n8n import N8nClient, next_delay
from services.common.report_store import ReportStore
from services.common.workpool import WorkPool, leased
from services.scheduling import domain, reports
from services.scheduling.settings import SchedulingSettings
from services.scheduling.store import SchedulingStore

if TYPE_CHECKING:
    from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceAsyncStub
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def to_pb(record: dict[str, str], duplicate: bool = False) -> pb.Agendamento:
    return pb.Agendamento(
        id=record["id"],
        status=record.get("status", domain.PENDING),
        lead_id=int(record.get("lead_id") or 0),
        vendedor_id=int(record.get("vendedor_id") or 0),
        vendedor_name=record.get("vendedor_name", ""),
        requested_at=record.get("requested_at", ""),
        preference=record.get("preference", ""),
        created_at=float(record.get("created_at") or 0),
        updated_at=float(record.get("updated_at") or 0),
        detail=record.get("detail", ""),
        attempts=int(record.get("attempts") or 0),
        conversation_id=record.get("conversation_id", ""),
        duplicate=duplicate,
    )


class Agendamentos:
    def __init__(
        self,
        settings: SchedulingSettings,
        store: SchedulingStore,
        gateway: KommoGatewayAsyncStub,
        vendedores: VendedorServiceAsyncStub,
        conversations: ConversationServiceAsyncStub,
        n8n: N8nClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.vendedores = vendedores
        self.conversations = conversations
        self.n8n = n8n

    async def _conversation(self, request: pb.AgendamentoRequest) -> conv.Conversation | None:
        if not (request.conversation_id or request.lead_id or request.contact_id):
            raise InvalidInput("lead_id, conversation_id or contact_id is required")
        try:
            return await self.conversations.GetConversation(
                conv.GetConversationRequest(
                    conversation_id=request.conversation_id,
                    lead_id=request.lead_id,
                    contact_id=request.contact_id,
                ),
                metadata=client_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            if request.conversation_id:
                raise NotFound(f"conversation {request.conversation_id} not found") from exc
            return None

    async def _window(self, lead_id: int) -> conv.Window | None:
        """The lead's window, as the conversation service knows it; None when it cannot
        say now (the confirmation is still guarded when it is sent)."""
        try:
            return await self.conversations.GetWindow(
                conv.GetWindowRequest(lead_id=lead_id), metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("WhatsApp window unknown for the scheduling envelope: %s", exc.code().name)
            return None

    async def request(self, request: pb.AgendamentoRequest) -> pb.Agendamento:
        s = self.settings
        slot = domain.parse_slot(request.requested_at, s.bridge_timezone, domain.now_utc())
        if slot is None and not request.preference.strip():
            raise InvalidInput("requested_at or a preference is required")
        conversation = await self._conversation(request)
        lead_id = request.lead_id or (conversation.lead_id if conversation else 0)
        if not lead_id:
            raise NotFound(f"no lead known for contact {request.contact_id}")
        metadata = client_metadata()
        try:
            lead = await self.gateway.GetLead(gw.GetLeadRequest(lead_id=lead_id), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"lead {lead_id} not found in Kommo") from exc
            raise
        try:
            vendedor = await self.vendedores.GetVendedorForLead(
                vd.GetVendedorForLeadRequest(lead_id=lead_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Conflict(f"no vendedor for this agendamento: {exc.details()}") from exc
            raise
        contact: dict[str, Any] | None = None
        contact_id = request.contact_id or lead.main_contact_id
        if contact_id:
            try:
                c = await self.gateway.GetContact(
                    gw.GetContactRequest(contact_id=contact_id), metadata=metadata
                )
                contact = {
                    "id": c.id,
                    "name": c.name,
                    "phone": s.contact_disclosure.phone(c.phones[0] if c.phones else None),
                }
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        request_id = uuid.uuid4().hex
        key = domain.slot_key(slot, request.preference)
        ttl = int(s.scheduling_dedupe_days * 86400)
        existing = await self.store.claim_slot(lead_id, key, request_id, ttl)
        if existing is not None:
            record = await self.store.get(existing)
            if record:
                return to_pb(record, duplicate=True)
        vendedor_json = {
            "id": vendedor.id,
            "name": vendedor.name,
            "email": vendedor.email or None,
            "areas": list(vendedor.areas),
            "source": vendedor.source,
        }
        lead_json = {"id": lead.id, "name": lead.name, "status_id": lead.status_id}
        answers = domain.callbacks(s.edge_public_url, request_id, lead_id)
        scheduling = {
            "id": request_id,
            "requested_at": slot.isoformat() if slot else None,
            "timezone": s.bridge_timezone,
            "preference": request.preference or None,
            "notes": request.notes or None,
            "agenda": domain.agenda_row(
                request_id=request_id,
                slot=slot,
                timezone=s.bridge_timezone,
                preference=request.preference,
                notes=request.notes,
                lead=lead_json,
                contact=contact,
                vendedor=vendedor_json,
            ),
            "status_callback": answers["status_callback"],
        }
        window = await self._window(lead_id)
        envelope = n8n_envelope(
            event=SCHEDULING_REQUESTED,
            event_id=request_id,
            occurred_at=domain.now_utc().isoformat().replace("+00:00", "Z"),
            conversation={
                "id": conversation.id,
                "lead_id": conversation.lead_id,
                **window_fields(window),
            }
            if conversation
            else None,
            # WhatsApp's 24-hour window, also for a lead with no conversation yet: when it
            # is closed, the confirmation must be a template (`templates`).
            window=window_fields(window),
            templates=[
                {"purpose": t.purpose, "variables": list(t.variables)}
                for t in (window.templates if window else [])
            ],
            lead=lead_json,
            contact=contact,
            vendedor=vendedor_json,
            scheduling=scheduling,
            callback=answers["callback"],
        )
        now = time.time()
        record = {
            "id": request_id,
            "status": domain.PENDING,
            "lead_id": str(lead_id),
            "vendedor_id": str(vendedor.id),
            "vendedor_name": vendedor.name,
            "requested_at": slot.isoformat() if slot else "",
            "preference": request.preference,
            "conversation_id": conversation.id if conversation else "",
            "payload": json.dumps(envelope, ensure_ascii=False),
            "attempts": "0",
            "created_at": str(now),
            "updated_at": str(now),
        }
        # Queued leased to this request, which delivers it now; if this replica dies,
        # the delivery pool of a live one takes it when the lease runs out.
        claim = Claim(request_id, now_ms() + s.lease_ms)
        owner = reports.owner(lead.responsible_user_id, lead.pipeline_id, lead.status_id)
        await self.store.create(request_id, record, claim.lease, contact_id, owner)
        log.info("agendamento requested", extra={"agendamento": request_id, "lead_id": lead_id})
        async with leased(self.store.outbox, claim, s.lease_ms):
            await self.deliver(claim)
        return to_pb(await self.store.get(request_id))

    async def deliver_claimed(self, claim: Claim) -> None:
        """One delivery of the pool; a failure of ours is tried again a lease later."""
        try:
            await self.deliver(claim)
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.warning("agendamento delivery failed: %s", exc)
            await self.store.outbox.reschedule(claim, now_ms() + self.settings.lease_ms)

    async def deliver(self, claim: Claim) -> None:
        record = await self.store.get(claim.member)
        if not record or record.get("status") != domain.PENDING:
            await self.store.delivered(claim.member)
            return
        url = self.settings.scheduling_url
        if not url:
            attempt_ok, retry, detail = False, True, "n8n is not configured (N8N_WEBHOOK_URL)"
        else:
            attempt = await self.n8n.post(url, claim.member, record["payload"])
            attempt_ok, retry, detail = attempt.ok, attempt.retry, attempt.detail
        attempts = int(record.get("attempts") or 0) + 1
        if attempt_ok:
            await self.store.update(claim.member, status=domain.DELIVERED, attempts=attempts)
            await self.store.delivered(claim.member)
            return
        delay = next_delay(self.settings.retry_schedule, attempts) if retry else None
        if delay is None:
            await self.store.update(
                claim.member, status=domain.FAILED, attempts=attempts, detail=detail
            )
            await self.store.delivered(claim.member)
            log.error("agendamento not delivered", extra={"agendamento": claim.member})
            return
        await self.store.update(claim.member, attempts=attempts, detail=detail)
        await self.store.outbox.reschedule(claim, now_ms() + int(delay * 1000))


class SchedulingServicer(SchedulingServiceServicer):
    def __init__(self, agendamentos: Agendamentos) -> None:
        self._agendamentos = agendamentos
        self._store = agendamentos.store

    async def RequestAgendamento(
        self, request: pb.AgendamentoRequest, context: Context
    ) -> pb.Agendamento:
        return await self._agendamentos.request(request)

    async def GetAgendamento(
        self, request: pb.GetAgendamentoRequest, context: Context
    ) -> pb.Agendamento:
        record = await self._store.get(request.id) if request.id else {}
        if not record:
            raise NotFound(f"agendamento {request.id} not found")
        return to_pb(record)

    async def UpdateAgendamentoStatus(
        self, request: pb.UpdateAgendamentoStatusRequest, context: Context
    ) -> pb.Agendamento:
        record = await self._store.get(request.id) if request.id else {}
        if not record:
            raise NotFound(f"agendamento {request.id} not found")
        if domain.check_transition(record.get("status", domain.PENDING), request.status):
            await self._store.update(request.id, status=request.status, detail=request.detail)
            if record.get("status") == domain.PENDING:
                # n8n answered before our delivery was marked: nothing left to send.
                await self._store.delivered(request.id)
        return to_pb(await self._store.get(request.id))

    async def GetReport(self, request: rpt.GetReportRequest, context: Context) -> rpt.Report:
        store = ReportStore(self._store.redis, self._store.report_days, reports.FIGURES)
        return await store.answer(request)

    async def EraseData(
        self, request: pb.EraseSchedulingDataRequest, context: Context
    ) -> pb.EraseSchedulingDataResponse:
        if not all(is_kommo_id(x) for x in [*request.lead_ids, *request.contact_ids]):
            raise InvalidInput(f"lead and contact ids must be Kommo ids (1 to {KOMMO_ID_MAX})")
        counts = await self._store.erase(list(request.lead_ids), list(request.contact_ids))
        log.warning("scheduling data erased", extra={"erased": dict(counts)})
        return pb.EraseSchedulingDataResponse(erased=dict(counts))


def delivery_pool(agendamentos: Agendamentos) -> WorkPool:
    """Delivers pending agendamentos to n8n with retries, in every replica, many at once
    (N8N_DELIVERY_CONCURRENCY): claim → POST → delivered or rescheduled."""
    settings = agendamentos.settings
    return WorkPool(
        "agendamento_delivery",
        agendamentos.store.outbox,
        agendamentos.deliver_claimed,
        slots=settings.n8n_delivery_concurrency,
        lease_ms=settings.lease_ms,
        poll_seconds=settings.poll_interval_seconds,
    )


def window_fields(window: conv.Window | None) -> dict[str, Any]:
    """The channel and WhatsApp's window as every envelope names them."""
    if window is None:
        return {"origin": None, "window_open": None, "window_open_until": None}
    until = (
        datetime.fromtimestamp(window.open_until, UTC).isoformat().replace("+00:00", "Z")
        if window.open_until
        else None
    )
    return {
        "origin": window.origin or None,
        "window_open": window.open,
        "window_open_until": until,
    }
