"""Kommo REST API v4: the account's events, and the webhook subscriptions that send them.

The gate has already checked the bearer token and the rate limit when a handler runs.
"""

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import WebhookSubscribeIn, WebhookUnsubscribeIn
from sandbox.kommo.query import filter_values, int_filter
from sandbox.kommo.records import WebhookSubscription
from sandbox.kommo.render import render_event, render_subscription
from sandbox.kommo.responses import (
    MAX_EVENTS_PAGE_LIMIT,
    HalResponse,
    PageRequest,
    ValidationIssue,
    base_url,
    hal_list,
    no_content,
    self_link,
    validation_problem,
)

router = APIRouter(prefix="/api/v4")

# Events a webhook subscription may name (Kommo's list, the ones that matter here).
WEBHOOK_SETTINGS = frozenset(
    {
        "add_lead", "update_lead", "delete_lead", "restore_lead", "status_lead",
        "responsible_lead", "note_lead", "add_contact", "update_contact", "delete_contact",
        "restore_contact", "responsible_contact", "note_contact", "add_company",
        "update_company", "delete_company", "add_task", "update_task", "delete_task",
        "add_talk", "update_talk", "add_message", "add_chat_template_review",
    }
)  # fmt: skip


@router.get("/events")
async def list_events(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    base = base_url(request)
    entities = {value.rstrip("s") for value in filter_values(request, "entity")}
    entity_ids = int_filter(request, "entity_id")
    types = set(filter_values(request, "type"))
    authors = int_filter(request, "created_by")
    since = request.query_params.get("filter[created_at][from]")
    until = request.query_params.get("filter[created_at][to]")
    try:
        low = int(since) if since else None
        high = int(until) if until else None
    except ValueError as exc:
        raise validation_problem(
            [ValidationIssue("0", "filter.created_at", "must be Unix seconds")]
        ) from exc
    # Kommo lists events newest first.
    events = [
        event
        for event in reversed(state.events)
        if (not entities or event.entity_type in entities)
        and (not entity_ids or event.entity_id in entity_ids)
        and (not types or event.type in types)
        and (not authors or event.created_by in authors)
        and (low is None or event.created_at >= low)
        and (high is None or event.created_at <= high)
    ]
    return hal_list(
        request,
        "events",
        events,
        lambda event: render_event(event, state, base),
        PageRequest.from_query(request, MAX_EVENTS_PAGE_LIMIT),
    )


@router.get("/webhooks")
async def list_webhooks(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    destinations = set(filter_values(request, "destination"))
    subscriptions = [
        s for s in state.subscriptions if not destinations or s.destination in destinations
    ]
    if not subscriptions:
        return no_content()
    return HalResponse(
        {
            "_total_items": len(subscriptions),
            "_links": self_link(request, "/api/v4/webhooks"),
            "_embedded": {"webhooks": [render_subscription(s, state) for s in subscriptions]},
        }
    )


@router.post("/webhooks", status_code=201)
async def subscribe_webhook(body: WebhookSubscribeIn, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    unknown = [setting for setting in body.settings if setting not in WEBHOOK_SETTINGS]
    if not body.settings or unknown:
        raise validation_problem(
            [ValidationIssue("0", "settings", f"Unknown or missing events: {unknown}")]
        )
    if not body.destination.startswith(("http://", "https://")):
        raise validation_problem([ValidationIssue("0", "destination", "Invalid URL")])
    existing = next((s for s in state.subscriptions if s.destination == body.destination), None)
    if existing is None:
        existing = WebhookSubscription(
            id=state.subscription_ids.take(),
            destination=body.destination,
            settings=list(body.settings),
            created_at=int(time.time()),
            sort=body.sort,
        )
        state.subscriptions.append(existing)
    else:
        existing.settings = list(body.settings)
        existing.disabled = False
    return HalResponse(render_subscription(existing, state), status_code=201)


@router.delete("/webhooks")
async def unsubscribe_webhook(body: WebhookUnsubscribeIn, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    state.subscriptions = [s for s in state.subscriptions if s.destination != body.destination]
    return no_content()
