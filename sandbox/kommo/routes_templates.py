"""Kommo's chat templates API: ``/api/v4/chats/templates`` (docs/kommo-api.md).

- ``GET`` lists the account's templates by id, at most 50 a page (``limit``, ``page``;
  ``_links.next`` when there is more), 204 when none; ``with=reviews`` adds each WhatsApp
  (``waba``) template's ``review_status`` (``draft``, ``review``, ``approved``, ``paused``,
  ``rejected``); Kommo's own ``amocrm`` templates have no review.
- ``POST`` takes a list of new templates and creates them as drafts (no Salesbot holds them).
- ``PATCH`` takes a list of edits by id; Kommo lets only a draft WhatsApp template be edited,
  so an edit of any other answers 400 and none of the list is applied.

Sending a template is a Salesbot run (routes_bots.py, activity.py), not part of this API.
"""

import time
from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from sandbox.kommo.config import TEMPLATE_TYPES
from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import ChatTemplateIn, ChatTemplatePatchItem
from sandbox.kommo.records import ChatTemplate
from sandbox.kommo.render import render_chat_template
from sandbox.kommo.responses import (
    MAX_WRITE_ITEMS,
    HalResponse,
    PageRequest,
    ValidationIssue,
    base_url,
    check_batch_size,
    hal_list,
    self_link,
    validation_problem,
)
from sandbox.kommo.state import AccountState

router = APIRouter(prefix="/api/v4/chats/templates")

PATH = "/api/v4/chats/templates"
# Kommo serves at most 50 templates a page.
MAX_TEMPLATES_PAGE_LIMIT = 50


def _with_reviews(request: Request) -> bool:
    wanted = request.query_params.get("with", "").split(",")
    return "reviews" in {part.strip() for part in wanted}


@router.get("")
async def list_templates(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    base = base_url(request)
    reviews = _with_reviews(request)
    templates = sorted(state.templates.values(), key=lambda template: template.id)
    return hal_list(
        request,
        "chat_templates",
        templates,
        lambda template: render_chat_template(template, state, base, reviews),
        PageRequest.from_query(request, MAX_TEMPLATES_PAGE_LIMIT),
    )


def _written(request: Request, state: AccountState, templates: list[ChatTemplate]) -> Response:
    base = base_url(request)
    return HalResponse(
        {
            "_links": self_link(request, PATH),
            "_embedded": {
                "chat_templates": [render_chat_template(t, state, base, True) for t in templates]
            },
        }
    )


def _request_ids(items: Sequence[ChatTemplateIn | ChatTemplatePatchItem]) -> list[str]:
    return [item.request_id or str(index) for index, item in enumerate(items)]


@router.post("")
async def add_templates(
    items: list[ChatTemplateIn], request: Request, sandbox: SandboxDep
) -> Response:
    state = sandbox.state
    request_ids = _request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    issues: list[ValidationIssue] = []
    for item, request_id in zip(items, request_ids, strict=True):
        if not item.name.strip():
            issues.append(
                ValidationIssue(request_id, "name", "This field is missing.", "FieldMissing")
            )
        if not item.content.strip():
            issues.append(
                ValidationIssue(request_id, "content", "This field is missing.", "FieldMissing")
            )
        if item.type not in TEMPLATE_TYPES:
            issues.append(ValidationIssue(request_id, "type", f"Unknown type {item.type!r}"))
    if not items or issues:
        raise validation_problem(issues or [ValidationIssue("0", "", "Empty request")])
    now = int(time.time())
    created: list[ChatTemplate] = []
    for item in items:
        template = ChatTemplate(
            id=state.template_ids.take(),
            name=item.name,
            content=item.content,
            review_status="draft",
            bot_id=None,
            created_at=now,
            updated_at=now,
            type=item.type,
            waba_category=item.waba_category or "UTILITY",
            waba_language=item.waba_language or "pt_BR",
            waba_header=item.waba_header,
            waba_footer=item.waba_footer,
            waba_examples=dict(item.waba_examples or {}),
            buttons=list(item.buttons or []),
        )
        state.templates[template.id] = template
        created.append(template)
    return _written(request, state, created)


@router.patch("")
async def edit_templates(
    items: list[ChatTemplatePatchItem], request: Request, sandbox: SandboxDep
) -> Response:
    """All or nothing, like the other list writes: one refused item applies none."""
    state = sandbox.state
    request_ids = _request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    issues: list[ValidationIssue] = []
    for item, request_id in zip(items, request_ids, strict=True):
        template = state.templates.get(item.id)
        if template is None:
            issues.append(ValidationIssue(request_id, "id", "Template not found", "NotFound"))
        elif template.type == "waba" and template.review_status != "draft":
            issues.append(
                ValidationIssue(
                    request_id,
                    "id",
                    f"A WhatsApp template is editable only as a draft; this one is "
                    f"{template.review_status}",
                    "NotEditable",
                )
            )
        for name, value in (("name", item.name), ("content", item.content)):
            if value is not None and not value.strip():
                issues.append(
                    ValidationIssue(request_id, name, "This field is missing.", "FieldMissing")
                )
    if not items or issues:
        raise validation_problem(issues or [ValidationIssue("0", "", "Empty request")])
    now = int(time.time())
    edited: list[ChatTemplate] = []
    for item in items:
        template = state.templates[item.id]
        for name in item.model_fields_set - {"id", "request_id"}:
            value = getattr(item, name)
            if value is not None:
                setattr(template, name, value)
        template.updated_at = now
        edited.append(template)
    return _written(request, state, edited)
