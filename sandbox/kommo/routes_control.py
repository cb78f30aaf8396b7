"""``/_sandbox/…``: what tests use to be unkind, to act as people, and to inspect.

Not part of Kommo: these calls skip the gate (no token, no rate limit, not recorded).

WhatsApp's 24-hour window (whatsapp.py): ``GET``/``POST /_sandbox/leads/{id}/chat`` read and
set a chat's ``origin`` and ``customer_last_wrote_at`` (Unix seconds, null = never wrote) and
answer the chat's window; ``GET /_sandbox/closed-window-sends`` lists the free-form messages
sent into a closed window (not delivered); ``GET /_sandbox/templates`` lists the chat
templates with their review and bot, and ``POST /_sandbox/templates/{id}/review`` plays Meta's
review. ``/_sandbox/reset`` returns all of it to the seed.
"""

import time
from typing import Literal, Self

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from sandbox.kommo.config import ReviewStatus
from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.records import Attachment, ChatTemplate, Lead, User
from sandbox.kommo.render import (
    render_chat_message,
    render_lead,
    render_note,
    render_task,
    render_user,
)
from sandbox.kommo.responses import JsonDict, KommoProblem, base_url
from sandbox.kommo.runtime import Sandbox
from sandbox.kommo.seed import mobile_phone
from sandbox.kommo.traffic import FailRule
from sandbox.kommo.whatsapp import chat_window

router = APIRouter(prefix="/_sandbox")


class _Strict(BaseModel):
    # A misspelt control field must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid")


class FailRuleIn(_Strict):
    path_prefix: str
    status: int = Field(ge=100, le=599)
    count: int = Field(default=1, ge=1)
    apply_effect: bool = False
    method: str | None = None
    # Answer the failure only after the effect has happened (needs apply_effect).
    await_effect: bool = False

    @model_validator(mode="after")
    def _effect_to_await(self) -> Self:
        if self.await_effect and not self.apply_effect:
            raise ValueError("await_effect needs apply_effect: there is no effect to wait for")
        return self


class FaultsIn(_Strict):
    fail_next: list[FailRuleIn] = Field(default_factory=list)
    clear_fail_next: bool = False
    latency_ms: int | None = Field(default=None, ge=0)
    down: bool | None = None
    blocked: bool | None = None
    rate_limit_rps: int | None = Field(default=None, ge=0)
    block_after_429s: int | None = Field(default=None, ge=0)


class AttachmentIn(_Strict):
    type: str
    link: str
    file_name: str = ""


class CustomerMessageIn(_Strict):
    lead_id: int
    text: str = ""
    message_type: str = "text"
    attachment: AttachmentIn | None = None


class UserMessageIn(_Strict):
    lead_id: int
    user_id: int
    text: str


class LeadEventIn(_Strict):
    kind: Literal["add", "status"]
    # "add" without a lead id creates a new lead (and its contact) first.
    lead_id: int | None = None
    # ... or a new lead of this known contact (a customer's next deal): no new contact.
    contact_id: int | None = None
    status_id: int | None = None
    name: str | None = None
    phone: str | None = None
    responsible_user_id: int | None = None


class UserIn(_Strict):
    name: str
    email: str
    is_active: bool = True
    is_admin: bool = False
    lang: str = "pt"


class UserPatchIn(_Strict):
    name: str | None = None
    email: str | None = None
    is_active: bool | None = None
    is_admin: bool | None = None
    lang: str | None = None


class ChatStateIn(_Strict):
    """What to change in a lead's chat; a field left out keeps its value."""

    origin: str | None = Field(default=None, min_length=1)
    # Unix seconds; null: the customer never wrote (no window on a windowed origin).
    customer_last_wrote_at: float | None = None


class TemplateReviewIn(_Strict):
    review_status: ReviewStatus


def _lead(sandbox: Sandbox, lead_id: int) -> Lead:
    lead = sandbox.state.leads.get(lead_id)
    if lead is None:
        raise KommoProblem(404, f"Lead {lead_id} not found")
    return lead


def _user(sandbox: Sandbox, user_id: int) -> User:
    user = sandbox.state.users.get(user_id)
    if user is None:
        raise KommoProblem(404, f"User {user_id} not found")
    return user


@router.get("/health")
async def health() -> JsonDict:
    return {"status": "ok"}


@router.get("/faults")
async def get_faults(sandbox: SandboxDep) -> JsonDict:
    return {**sandbox.faults.as_json(), "rate_limit_rps": sandbox.limiter.rps}


@router.post("/faults")
async def set_faults(body: FaultsIn, sandbox: SandboxDep) -> JsonDict:
    faults = sandbox.faults
    if body.clear_fail_next:
        faults.fail_next.clear()
    faults.fail_next += [
        FailRule(
            rule.path_prefix,
            rule.status,
            rule.count,
            rule.apply_effect,
            rule.method,
            rule.await_effect,
        )
        for rule in body.fail_next
    ]
    if body.latency_ms is not None:
        faults.latency_ms = body.latency_ms
    if body.down is not None:
        faults.down = body.down
    if body.blocked is not None:
        faults.set_blocked(body.blocked)
    if body.rate_limit_rps is not None:
        sandbox.limiter.rps = body.rate_limit_rps
    if body.block_after_429s is not None:
        faults.block_after_429s = body.block_after_429s
    return {**faults.as_json(), "rate_limit_rps": sandbox.limiter.rps}


@router.post("/expire-tokens")
async def expire_tokens(sandbox: SandboxDep) -> JsonDict:
    return {"expired": sandbox.tokens.expire_access_tokens()}


@router.post("/revoke-refresh-tokens")
async def revoke_refresh_tokens(sandbox: SandboxDep) -> JsonDict:
    return {"revoked": sandbox.tokens.revoke_refresh_tokens()}


@router.post("/reset")
async def reset(sandbox: SandboxDep) -> JsonDict:
    await sandbox.reset()
    return {"status": "reset"}


@router.post("/customer-message")
async def customer_message(body: CustomerMessageIn, sandbox: SandboxDep) -> JsonDict:
    lead = _lead(sandbox, body.lead_id)
    attachment = (
        None
        if body.attachment is None
        else Attachment(body.attachment.type, body.attachment.link, body.attachment.file_name)
    )
    message, notified = await sandbox.activity.customer_writes(
        lead, body.text, body.message_type, attachment
    )
    return {
        "message_id": message.id,
        "chat_id": lead.chat_id,
        "bridge_status": notified.bridge_status,
        "body": notified.body,
    }


@router.post("/user-message")
async def user_message(body: UserMessageIn, sandbox: SandboxDep) -> JsonDict:
    lead = _lead(sandbox, body.lead_id)
    user = _user(sandbox, body.user_id)
    message, notified = await sandbox.activity.user_writes(lead, user, body.text)
    return {
        "message_id": message.id,
        "chat_id": lead.chat_id,
        "bridge_status": notified.bridge_status,
        "body": notified.body,
    }


@router.post("/lead-event")
async def lead_event(body: LeadEventIn, sandbox: SandboxDep) -> JsonDict:
    state = sandbox.state
    if body.contact_id is not None and (
        body.kind != "add" or body.lead_id is not None or body.phone is not None
    ):
        raise KommoProblem(
            400, "contact_id names the known contact of a new lead: 'add', no lead_id nor phone"
        )
    if body.contact_id is not None:
        contact = state.contacts.get(body.contact_id)
        if contact is None:
            raise KommoProblem(404, f"Contact {body.contact_id} not found")
        lead = state.add_lead_of(
            contact,
            name=f"Novo negócio — {body.name or contact.name}",
            responsible_user_id=body.responsible_user_id or contact.responsible_user_id,
            status_id=state.pipeline.statuses[0].id,
            price=0,
            area=None,
            tags=[state.tags[0]],
            created_at=int(time.time()),
        )
    elif body.lead_id is None:
        if body.kind != "add":
            raise KommoProblem(400, "lead_id is required for a status event")
        number = len(state.leads) + 1
        contact_name = body.name or f"Cliente {number}"
        lead = state.add_lead(
            name=f"Novo contato — {contact_name}",
            contact_name=contact_name,
            phone=body.phone or mobile_phone(number),
            email=None,
            responsible_user_id=body.responsible_user_id or state.admin.id,
            status_id=state.pipeline.statuses[0].id,
            price=0,
            area=None,
            tags=[state.tags[0]],
            created_at=int(time.time()),
        )
    else:
        lead = _lead(sandbox, body.lead_id)
    old_status_id = lead.status_id
    if body.status_id is not None:
        if not state.pipeline.has_status(body.status_id):
            raise KommoProblem(400, f"Status {body.status_id} is not in the pipeline")
        lead.status_id = body.status_id
        lead.updated_at = int(time.time())
    notified = await sandbox.activity.lead_event(body.kind, lead, old_status_id)
    return {"lead_id": lead.id, "bridge_status": notified.bridge_status, "body": notified.body}


@router.post("/users", status_code=201)
async def add_user(body: UserIn, request: Request, sandbox: SandboxDep) -> JsonDict:
    user = sandbox.state.add_user(
        body.name, body.email, is_admin=body.is_admin, is_active=body.is_active
    )
    user.lang = body.lang
    return render_user(user, base_url(request))


@router.patch("/users/{user_id}")
async def change_user(
    user_id: int, body: UserPatchIn, request: Request, sandbox: SandboxDep
) -> JsonDict:
    user = _user(sandbox, user_id)
    user.name = body.name if body.name is not None else user.name
    user.email = body.email if body.email is not None else user.email
    user.is_active = body.is_active if body.is_active is not None else user.is_active
    user.is_admin = body.is_admin if body.is_admin is not None else user.is_admin
    user.lang = body.lang if body.lang is not None else user.lang
    return render_user(user, base_url(request))


@router.delete("/users/{user_id}", status_code=204)
async def remove_user(user_id: int, sandbox: SandboxDep) -> Response:
    user = _user(sandbox, user_id)
    if user.is_admin and sum(u.is_admin for u in sandbox.state.users.values()) == 1:
        raise KommoProblem(400, "The account's only admin cannot be removed")
    del sandbox.state.users[user_id]
    return Response(status_code=204)


@router.get("/chats/{lead_id}")
async def chat(lead_id: int, sandbox: SandboxDep) -> list[JsonDict]:
    _lead(sandbox, lead_id)
    return [render_chat_message(m) for m in sandbox.state.chats.get(lead_id, [])]


def _chat_state(sandbox: Sandbox, lead: Lead) -> JsonDict:
    window = chat_window(sandbox.config, lead, time.time())
    return {"lead_id": lead.id, "chat_id": lead.chat_id, **window.as_json()}


@router.get("/leads/{lead_id}/chat")
async def chat_state(lead_id: int, sandbox: SandboxDep) -> JsonDict:
    return _chat_state(sandbox, _lead(sandbox, lead_id))


@router.post("/leads/{lead_id}/chat")
async def set_chat_state(lead_id: int, body: ChatStateIn, sandbox: SandboxDep) -> JsonDict:
    lead = _lead(sandbox, lead_id)
    if body.origin is not None:
        lead.chat_origin = body.origin
    if "customer_last_wrote_at" in body.model_fields_set:
        sandbox.state.customer_wrote_at(lead, body.customer_last_wrote_at)
    return _chat_state(sandbox, lead)


@router.get("/closed-window-sends")
async def closed_window_sends(sandbox: SandboxDep) -> list[JsonDict]:
    """Free-form messages sent into a closed 24-hour window (not delivered), oldest first."""
    return [send.as_json() for send in sandbox.activity.closed_window_sends]


def _template_json(template: ChatTemplate) -> JsonDict:
    return {
        "id": template.id,
        "name": template.name,
        "content": template.content,
        "type": template.type,
        "review_status": template.review_status,
        "bot_id": template.bot_id,
        "waba_category": template.waba_category,
        "waba_language": template.waba_language,
    }


@router.get("/templates")
async def templates(sandbox: SandboxDep) -> list[JsonDict]:
    return [_template_json(t) for t in sorted(sandbox.state.templates.values(), key=lambda t: t.id)]


@router.post("/templates/{template_id}/review")
async def review_template(
    template_id: int, body: TemplateReviewIn, sandbox: SandboxDep
) -> JsonDict:
    """Meta's verdict on a template, as Kommo would learn it."""
    template = sandbox.state.templates.get(template_id)
    if template is None:
        raise KommoProblem(404, f"Template {template_id} not found")
    template.review_status = body.review_status
    template.updated_at = int(time.time())
    return _template_json(template)


@router.get("/leads/{lead_id}")
async def lead_snapshot(lead_id: int, request: Request, sandbox: SandboxDep) -> JsonDict:
    """A lead as the API shows it, plus its notes, tasks and chat, without a token."""
    lead = _lead(sandbox, lead_id)
    state = sandbox.state
    base = base_url(request)
    return {
        "lead": render_lead(lead, state, base, with_contacts=True),
        "notes": [render_note(n, state, base) for n in state.notes if n.entity_id == lead_id],
        "tasks": [
            render_task(t, state, base)
            for t in state.tasks.values()
            if t.entity_type == "leads" and t.entity_id == lead_id
        ],
        "chat": [render_chat_message(m) for m in state.chats.get(lead_id, [])],
        "chat_window": _chat_state(sandbox, lead),
    }


@router.get("/stats")
async def stats(sandbox: SandboxDep) -> JsonDict:
    return sandbox.stats()


@router.get("/requests")
async def requests(sandbox: SandboxDep, since: int = 0) -> list[JsonDict]:
    return [request.as_json() for request in sandbox.traffic.since(since)]


@router.get("/webhooks-sent")
async def webhooks_sent(sandbox: SandboxDep, since: int = 0) -> list[JsonDict]:
    return [delivery.as_json() for delivery in sandbox.webhooks.since(since)]


@router.get("/salesbot-runs")
async def salesbot_runs(sandbox: SandboxDep) -> list[JsonDict]:
    return [run.as_json() for run in sandbox.activity.salesbot_runs]


@router.get("/events")
async def events(sandbox: SandboxDep) -> list[JsonDict]:
    """Every recorded account event, oldest first, without a token."""
    return [
        {
            "id": event.id,
            "type": event.type,
            "entity_id": event.entity_id,
            "entity_type": event.entity_type,
            "created_at": event.created_at,
            "created_by": event.created_by,
            "value_after": event.value_after,
        }
        for event in sandbox.state.events
    ]
