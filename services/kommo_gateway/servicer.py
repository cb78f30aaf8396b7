"""gRPC ⇄ Kommo for the gateway."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as pb
from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayServicer
from services.common.due_queue import text
from services.common.errors import InvalidInput, Unavailable
from services.common.grpc_client import KOMMO_PRIORITY_METADATA
from services.common.grpc_server import serve_streamed
from services.common.kommo_ids import KOMMO_ID_MAX, is_kommo_id
from services.common.stream_calls import answer_of, answers
from services.kommo_gateway import mapping
from services.kommo_gateway.delivery import INCOMING_CHAT_MESSAGE, Delivery, Outgoing
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.notes import Notes
from services.kommo_gateway.ratelimit import Priority, call_deadline, call_priority
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.store import (
    NOTES,
    cache_keep_seconds,
    cache_key,
    delivery_attempt_key,
    delivery_key,
    lead_slot_key,
)
from services.kommo_gateway.templates import TemplateCache

log = logging.getLogger(__name__)

# WhatsApp's window lasts 24 hours: an older incoming message cannot open it. Two days are
# looked at, so a window just closed is still told apart from "never wrote".
_CUSTOMER_LOOKBACK_SECONDS = 2 * 86400
# Kommo's maximum page of events.
_EVENTS_LIMIT = 100

# A task with no due time is due in an hour: someone is waiting.
_DEFAULT_TASK_SECONDS = 3600
# Lead fields a delivery may write before its bot runs: a template's markers are few, and
# a value is at most a WhatsApp message long.
MAX_LEAD_FIELDS = 20
MAX_LEAD_FIELD_CHARS = 4096

Context = grpc.aio.ServicerContext[Any, Any]


def _on_budget(context: Context) -> None:
    """What the queues for Kommo's budget need of this call: its deadline (a call that
    could not leave before it is refused at once) and, when the caller says it is an
    operator, its class."""
    remaining = context.time_remaining()
    call_deadline.set(None if remaining is None else time.monotonic() + remaining)
    said = dict(context.invocation_metadata() or ()).get(KOMMO_PRIORITY_METADATA)
    call_priority.set(Priority.BACKGROUND if said == "operator" else None)


class GatewayServicer(KommoGatewayServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        redis: aioredis.Redis,
        kommo: KommoClient,
        delivery: Delivery,
        notes: Notes | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._kommo = kommo
        self._delivery = delivery
        # The notes deliveries keep (the same as the delivery's), for their erasure.
        self._notes = notes
        self._templates = TemplateCache(kommo, settings.kommo_templates_cache_seconds)

    async def _cached(
        self,
        kind: str,
        entity_id: int,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        complete: Callable[[dict[str, Any]], bool] = lambda body: True,
    ) -> dict[str, Any]:
        """Read through a Redis cache; when Kommo is down, a stale copy beats no answer.
        A copy that is not `complete` (cached before a part was read, e.g. a contact's
        leads) is read again while fresh, and still answers when Kommo is down."""
        key = cache_key(kind, entity_id)
        raw = await self._redis.get(key)
        cached = json.loads(raw) if raw else None
        if (
            cached
            and time.time() - cached["at"] < self._settings.kommo_cache_ttl_seconds
            and complete(cached["body"])
        ):
            return dict(cached["body"])
        try:
            body = await fetch()
        except Unavailable:
            if cached:
                log.warning("Kommo unavailable: serving a cached %s", kind)
                return dict(cached["body"])
            raise
        await self._redis.set(
            key,
            json.dumps({"at": time.time(), "body": body}),
            ex=cache_keep_seconds(self._settings.retention_seconds),
        )
        return body

    async def EraseData(
        self, request: pb.EraseGatewayDataRequest, context: Context
    ) -> pb.EraseGatewayDataResponse:
        """The copies of these leads and contacts, the contacts of those leads (as the
        copy of the lead names them), and these deliveries' records."""
        if not all(is_kommo_id(x) for x in [*request.lead_ids, *request.contact_ids]):
            raise InvalidInput(f"lead and contact ids must be Kommo ids (1 to {KOMMO_ID_MAX})")
        contact_ids = set(request.contact_ids)
        for lead_id in request.lead_ids:
            raw = await self._redis.get(cache_key("lead", lead_id))
            if raw:
                contact_ids.add(mapping.lead(json.loads(raw)["body"]).main_contact_id)
        contact_ids.discard(0)
        groups = {
            "cached_leads": [cache_key("lead", x) for x in request.lead_ids],
            "cached_contacts": [cache_key("contact", x) for x in contact_ids],
            "deliveries": [delivery_key(k) for k in request.delivery_keys],
            # Short-lived locks named by the lead or the delivery: not counted.
            "": [lead_slot_key(x) for x in request.lead_ids]
            + [delivery_attempt_key(k) for k in request.delivery_keys],
        }
        erased: dict[str, int] = {}
        notes: list[str] = []
        if self._notes is not None and request.delivery_keys:
            # A reply's note is kept under its last part's key ("<key>#<n>"): they go
            # whether added or not (the text is personal data).
            named = set(request.delivery_keys)
            kept = [text(m) for m in await self._redis.hkeys(NOTES)]
            notes = [m for m in kept if m in named or m.split("#", 1)[0] in named]
            await self._notes.forget(notes)
        erased["notes"] = len(notes)
        async with self._redis.pipeline(transaction=True) as pipe:
            for keys in groups.values():
                if keys:
                    pipe.delete(*keys)
            deleted = iter(await pipe.execute())
        for kind, keys in groups.items():
            count = int(next(deleted)) if keys else 0
            if kind:
                erased[kind] = count
        log.warning("Kommo copies erased", extra={"erased": erased})
        return pb.EraseGatewayDataResponse(erased=erased)

    async def ForgetCopies(
        self, request: pb.ForgetCopiesRequest, context: Context
    ) -> pb.ForgetCopiesResponse:
        """Kommo changed these leads and contacts: their copies go, so the next read asks
        Kommo instead of serving the old one until KOMMO_CACHE_TTL_SECONDS runs out."""
        if not all(is_kommo_id(x) for x in [*request.lead_ids, *request.contact_ids]):
            raise InvalidInput(f"lead and contact ids must be Kommo ids (1 to {KOMMO_ID_MAX})")
        keys = [cache_key("lead", x) for x in request.lead_ids] + [
            cache_key("contact", x) for x in request.contact_ids
        ]
        forgotten = int(await self._redis.delete(*keys)) if keys else 0
        return pb.ForgetCopiesResponse(forgotten=forgotten)

    async def GetLead(self, request: pb.GetLeadRequest, context: Context) -> pb.Lead:
        _on_budget(context)
        if request.lead_id <= 0:
            raise InvalidInput("lead_id must be a positive integer")
        body = await self._cached(
            "lead", request.lead_id, lambda: self._kommo.lead(request.lead_id)
        )
        return mapping.lead(body)

    async def GetContact(self, request: pb.GetContactRequest, context: Context) -> pb.Contact:
        _on_budget(context)
        if request.contact_id <= 0:
            raise InvalidInput("contact_id must be a positive integer")
        body = await self._cached(
            "contact",
            request.contact_id,
            lambda: self._kommo.contact(request.contact_id),
            complete=mapping.lists_leads,
        )
        return mapping.contact(body)

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: Context
    ) -> pb.ListUsersResponse:
        _on_budget(context)
        users = await self._kommo.users()
        return pb.ListUsersResponse(users=[mapping.user(u) for u in users])

    async def AddNote(self, request: pb.AddNoteRequest, context: Context) -> pb.AddNoteResponse:
        _on_budget(context)
        if request.lead_id <= 0 or not request.text.strip():
            raise InvalidInput("a note needs a lead_id and a text")
        return pb.AddNoteResponse(note_id=await self._kommo.add_note(request.lead_id, request.text))

    async def DeliverMessages(
        self, request_iterator: AsyncIterator[pb.DeliverMessageCall], context: Context
    ) -> AsyncIterator[pb.DeliverMessageAnswer]:
        """DeliverMessage's calls as the conversation service streams them
        (services.common.stream_calls)."""
        async for answer in answers(request_iterator, self._answer_delivery):
            yield answer

    async def _answer_delivery(self, call: pb.DeliverMessageCall) -> pb.DeliverMessageAnswer:
        async def deliver() -> pb.DeliverMessageResponse:
            # The call's own deadline (a call that could not leave before it is refused
            # at once), a customer's reply's class.
            seconds = call.timeout_seconds
            call_deadline.set(time.monotonic() + seconds if seconds > 0 else None)
            call_priority.set(None)
            return await self._deliver(call.request)

        outcome = await serve_streamed(
            "DeliverMessage", call.request_id, call.timeout_seconds, deliver
        )
        return answer_of(pb.DeliverMessageAnswer(), call.id, outcome)

    async def DeliverMessage(
        self, request: pb.DeliverMessageRequest, context: Context
    ) -> pb.DeliverMessageResponse:
        _on_budget(context)
        return await self._deliver(request)

    async def _deliver(self, request: pb.DeliverMessageRequest) -> pb.DeliverMessageResponse:
        out = self._outgoing(request)
        status, method, note_kept = await self._delivery.deliver(out)
        log.info(
            "%s for the customer %s",
            "template" if out.template else "message",
            status,
            extra={
                "lead_id": out.lead_id,
                "via": method,
                "salesbot_id": out.salesbot_id or self._settings.kommo_salesbot_id,
                # Which fields, never their values (personal data).
                "lead_field_ids": [field_id for field_id, _ in out.lead_fields],
            },
        )
        return pb.DeliverMessageResponse(status=status, method=method, note_kept=note_kept)

    def _outgoing(self, request: pb.DeliverMessageRequest) -> Outgoing:
        """The request, validated: INVALID_ARGUMENT naming what is wrong."""
        if not request.idempotency_key:
            raise InvalidInput("idempotency_key is required: a customer gets each reply once")
        if request.salesbot_id and not is_kommo_id(request.salesbot_id):
            raise InvalidInput(f"salesbot_id must be a Kommo id (1 to {KOMMO_ID_MAX}) or 0")
        fields = sorted(request.lead_fields.items())
        if len(fields) > MAX_LEAD_FIELDS:
            raise InvalidInput(
                f"at most {MAX_LEAD_FIELDS} lead_fields a message, got {len(fields)}"
            )
        for field_id, value in fields:
            if not is_kommo_id(field_id):
                raise InvalidInput(
                    f"lead_fields: {field_id} is not a field id (a Kommo id, 1 to {KOMMO_ID_MAX})"
                )
            if len(value) > MAX_LEAD_FIELD_CHARS:
                raise InvalidInput(
                    f"lead_fields: the value of field {field_id} has {len(value)} characters, "
                    f"at most {MAX_LEAD_FIELD_CHARS}"
                )
        if fields and request.lead_id <= 0:
            raise InvalidInput("lead_fields are written to a lead: a lead_id is required")
        if request.template:
            if request.salesbot_id <= 0:
                raise InvalidInput(
                    "a template send needs salesbot_id: the Salesbot whose Message step "
                    "holds the approved WhatsApp template"
                )
            if request.lead_id <= 0:
                raise InvalidInput("a template send needs a lead_id: the bot runs on the lead")
        else:
            if not request.text.strip():
                raise InvalidInput("the message text is empty")
            if request.lead_id <= 0 and not request.chat_id:
                raise InvalidInput("a message needs a lead_id (or a chat_id for the Chats API)")
            s = self._settings
            if request.salesbot_id or not s.uses_chats_api:
                if request.lead_id <= 0:
                    raise InvalidInput("a message sent by a Salesbot needs a lead_id")
                if not s.kommo_reply_field_id:
                    raise InvalidInput(
                        "a text sent by a Salesbot needs the reply field (KOMMO_REPLY_FIELD_ID), "
                        "and this gateway sends texts through the Chats API: leave salesbot_id 0"
                    )
                if s.kommo_reply_field_id in request.lead_fields:
                    raise InvalidInput(
                        f"lead_fields: field {s.kommo_reply_field_id} is the reply field, "
                        "which carries the text"
                    )
        return Outgoing(
            lead_id=request.lead_id,
            text=request.text,
            key=request.idempotency_key,
            chat_id=request.chat_id,
            salesbot_id=request.salesbot_id,
            lead_fields=tuple(fields),
            template=request.template,
            note=request.note,
        )

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.Templates:
        _on_budget(context)
        return await self._templates.get(fresh=request.fresh)

    async def GetLastCustomerMessage(
        self, request: pb.GetLastCustomerMessageRequest, context: Context
    ) -> pb.LastCustomerMessage:
        _on_budget(context)
        lead_id = request.lead_id
        if not is_kommo_id(lead_id):
            raise InvalidInput("lead_id must be a Kommo id")
        since = int(time.time() - _CUSTOMER_LOOKBACK_SECONDS)
        body = await self._kommo.get_json(
            "/api/v4/events",
            {
                "filter[entity]": "lead",
                "filter[entity_id][]": lead_id,
                "filter[type][]": INCOMING_CHAT_MESSAGE,
                "filter[created_at][from]": since,
                "limit": _EVENTS_LIMIT,
            },
            priority=Priority.CONTEXT,
        )
        newest: dict[str, Any] | None = None
        for event in (body or {}).get("_embedded", {}).get("events", []):
            if event.get("type") != INCOMING_CHAT_MESSAGE:
                continue
            if newest is None or int(event.get("created_at") or 0) > int(
                newest.get("created_at") or 0
            ):
                newest = event
        if newest is None:
            return pb.LastCustomerMessage(found=False)
        origin = ""
        for value in newest.get("value_after") or []:
            message = value.get("message") if isinstance(value, dict) else None
            if isinstance(message, dict):
                origin = str(message.get("origin") or "")
        return pb.LastCustomerMessage(
            found=True, at=float(newest.get("created_at") or 0), origin=origin[:64]
        )

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.GatewayStatus:
        return await self._status()

    async def _status(self) -> pb.GatewayStatus:
        s = self._settings
        tokens = await self._kommo.tokens.load()
        problem = await self._kommo.tokens.problem()
        blocked = await self._kommo.tokens.blocked()
        detail = problem or blocked
        if problem:
            state = "refresh_refused"
        elif tokens is None or not (tokens.access_token or tokens.refresh_token):
            state = "missing"
            detail = "no Kommo token yet: authorise the bridge at /oauth/authorize"
        elif tokens.kind == "long_lived":
            expired = bool(tokens.expires_at) and tokens.expires_at < time.time()
            state = "expired" if expired else "long_lived"
            if expired:
                detail = "the long-lived token has expired: issue a new one in Kommo"
        else:
            state = "ok"
        breaker = self._kommo.breaker.state
        if breaker != "closed" and not detail:
            detail = f"Kommo is failing; calls paused for {self._kommo.breaker.retry_in():.0f} s"
        return pb.GatewayStatus(
            kommo_mode="sandbox" if s.kommo_sandbox else "kommo",
            base_url=s.base_url,
            token_state=state,
            token_expires_at=tokens.expires_at if tokens else 0.0,
            detail=detail,
            blocked=bool(blocked),
            breaker=breaker,
            rate_limit_rps=s.kommo_rate_limit_rps,
            token_refreshed_at=tokens.refreshed_at if tokens else 0.0,
        )

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        _on_budget(context)
        body = await self._kommo.account()
        return pb.Account(
            id=int(body.get("id") or 0),
            name=str(body.get("name") or ""),
            subdomain=str(body.get("subdomain") or ""),
            country=str(body.get("country") or ""),
            currency=str(body.get("currency") or ""),
        )

    async def UpdateFields(
        self, request: pb.UpdateFieldsRequest, context: Context
    ) -> pb.UpdateFieldsResponse:
        _on_budget(context)
        if request.entity not in ("leads", "contacts"):
            raise InvalidInput("entity must be 'leads' or 'contacts'")
        if request.entity_id <= 0 or not request.values:
            raise InvalidInput("an entity_id and at least one field value are required")
        await self._kommo.update_fields(
            request.entity, request.entity_id, [(v.field_id, v.value) for v in request.values]
        )
        # The cached copy is now stale.
        await self._redis.delete(cache_key(request.entity.rstrip("s"), request.entity_id))
        return pb.UpdateFieldsResponse()

    async def AddTask(self, request: pb.AddTaskRequest, context: Context) -> pb.AddTaskResponse:
        _on_budget(context)
        if request.lead_id <= 0 or not request.text.strip():
            raise InvalidInput("a task needs a lead_id and a text")
        complete_till = request.complete_till or int(time.time()) + _DEFAULT_TASK_SECONDS
        task_id = await self._kommo.add_task(
            request.lead_id, request.text, request.responsible_user_id, complete_till
        )
        return pb.AddTaskResponse(task_id=task_id)

    async def RegisterWebhook(
        self, request: pb.RegisterWebhookRequest, context: Context
    ) -> pb.Webhooks:
        _on_budget(context)
        if not request.destination.startswith(("https://", "http://")) or not request.events:
            raise InvalidInput("a webhook needs an http(s) destination and at least one event")
        await self._kommo.register_webhook(request.destination, list(request.events))
        return await self.ListWebhooks(pb.ListWebhooksRequest(), context)

    async def ListWebhooks(self, request: pb.ListWebhooksRequest, context: Context) -> pb.Webhooks:
        _on_budget(context)
        return pb.Webhooks(
            webhooks=[
                pb.Webhook(
                    destination=str(hook.get("destination") or ""),
                    events=[str(e) for e in hook.get("settings") or []],
                    disabled=bool(hook.get("disabled")),
                )
                for hook in await self._kommo.webhooks()
            ]
        )

    async def GetAuthorizeUrl(
        self, request: pb.GetAuthorizeUrlRequest, context: Context
    ) -> pb.AuthorizeUrl:
        return pb.AuthorizeUrl(url=await self._kommo.tokens.authorize_url())

    async def CompleteAuthorization(
        self, request: pb.CompleteAuthorizationRequest, context: Context
    ) -> pb.GatewayStatus:
        await self._kommo.tokens.complete_authorization(request.code, request.state)
        return await self._status()
