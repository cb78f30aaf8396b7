"""Kommo REST API v4: account, users, pipelines, custom fields, leads, contacts.

Notes and tasks are in ``routes_notes_tasks.py``, events and webhook subscriptions in
``routes_events_webhooks.py``. The gate has already checked the bearer token and the rate
limit when a handler runs.
"""

import time
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from sandbox.kommo.custom_fields import (
    CustomFieldDef,
    FieldValues,
    FieldWriteError,
    apply_field_writes,
)
from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import (
    ContactPatch,
    ContactPatchItem,
    CustomFieldIn,
    LeadPatch,
    LeadPatchItem,
)
from sandbox.kommo.query import int_filter, item_request_ids, with_values
from sandbox.kommo.records import Contact, Lead
from sandbox.kommo.render import (
    render_account,
    render_contact,
    render_field_definition,
    render_lead,
    render_pipeline,
    render_user,
)
from sandbox.kommo.responses import (
    MAX_WRITE_ITEMS,
    HalResponse,
    JsonDict,
    KommoProblem,
    PageRequest,
    ValidationIssue,
    base_url,
    check_batch_size,
    hal_list,
    no_content,
    self_link,
    validation_problem,
)
from sandbox.kommo.state import AccountState

router = APIRouter(prefix="/api/v4")

Commit = Callable[[], None]


@router.get("/account")
async def get_account(request: Request, sandbox: SandboxDep) -> Response:
    return HalResponse(
        render_account(sandbox.state, base_url(request), "task_types" in with_values(request))
    )


@router.get("/users")
async def list_users(request: Request, sandbox: SandboxDep) -> Response:
    base = base_url(request)
    users = list(sandbox.state.users.values())
    return hal_list(
        request,
        "users",
        users,
        lambda user: render_user(user, base),
        PageRequest.from_query(request),
    )


@router.get("/users/{user_id:int}")
async def get_user(user_id: int, request: Request, sandbox: SandboxDep) -> Response:
    user = sandbox.state.users.get(user_id)
    return no_content() if user is None else HalResponse(render_user(user, base_url(request)))


@router.get("/leads/pipelines")
async def list_pipelines(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    return HalResponse(
        {
            "_total_items": 1,
            "_links": self_link(request, "/api/v4/leads/pipelines"),
            "_embedded": {"pipelines": [render_pipeline(state.pipeline, state, base_url(request))]},
        }
    )


def _fields_answer(
    request: Request, entity: str, definitions: dict[int, CustomFieldDef]
) -> Response:
    base = base_url(request)
    return hal_list(
        request,
        "custom_fields",
        list(definitions.values()),
        lambda definition: render_field_definition(definition, entity, base),
        PageRequest.from_query(request),
    )


@router.get("/leads/custom_fields")
async def lead_custom_fields(request: Request, sandbox: SandboxDep) -> Response:
    return _fields_answer(request, "leads", sandbox.state.lead_fields)


@router.get("/contacts/custom_fields")
async def contact_custom_fields(request: Request, sandbox: SandboxDep) -> Response:
    return _fields_answer(request, "contacts", sandbox.state.contact_fields)


@router.get("/leads")
async def list_leads(request: Request, sandbox: SandboxDep) -> Response:
    """``filter[id][]`` names many leads in one request: unknown ids are absent, 204 when
    none is known, at most 250 a page."""
    state = sandbox.state
    base = base_url(request)
    with_contacts = "contacts" in with_values(request)
    wanted = int_filter(request, "id")
    leads = [lead for lead in state.leads.values() if not wanted or lead.id in wanted]
    return hal_list(
        request,
        "leads",
        leads,
        lambda lead: render_lead(lead, state, base, with_contacts),
        PageRequest.from_query(request),
    )


@router.get("/leads/{lead_id:int}")
async def get_lead(lead_id: int, request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    lead = state.leads.get(lead_id)
    if lead is None:
        # Kommo answers an unknown id with 204 and no body, not 404.
        return no_content()
    return HalResponse(
        render_lead(lead, state, base_url(request), "contacts" in with_values(request))
    )


def _field_issues(
    definitions: dict[int, CustomFieldDef],
    current: FieldValues,
    writes: list[CustomFieldIn] | None,
    request_id: str,
    issues: list[ValidationIssue],
) -> FieldValues:
    if writes is None:
        return current
    try:
        return apply_field_writes(definitions, current, [write.to_write() for write in writes])
    except FieldWriteError as exc:
        issues.append(ValidationIssue(request_id, exc.path, exc.detail, exc.code))
        return current


def _prepare_lead_patch(
    state: AccountState, lead: Lead, patch: LeadPatch, request_id: str
) -> tuple[Commit, list[ValidationIssue]]:
    """Validate a lead update without applying it, so a refused batch changes nothing."""
    issues: list[ValidationIssue] = []
    fields = _field_issues(
        state.lead_fields, lead.fields, patch.custom_fields_values, request_id, issues
    )
    if patch.responsible_user_id is not None and patch.responsible_user_id not in state.users:
        issues.append(
            ValidationIssue(request_id, "responsible_user_id", "User not found", "NotFound")
        )
    if patch.status_id is not None and not state.pipeline.has_status(patch.status_id):
        issues.append(ValidationIssue(request_id, "status_id", "Status not found", "NotFound"))
    if patch.pipeline_id is not None and patch.pipeline_id != state.pipeline.id:
        issues.append(ValidationIssue(request_id, "pipeline_id", "Pipeline not found", "NotFound"))

    def commit() -> None:
        lead.fields = fields
        lead.name = patch.name if patch.name is not None else lead.name
        lead.price = patch.price if patch.price is not None else lead.price
        lead.status_id = patch.status_id if patch.status_id is not None else lead.status_id
        if patch.responsible_user_id is not None:
            lead.responsible_user_id = patch.responsible_user_id
        lead.updated_at = int(time.time())

    return commit, issues


def _prepare_contact_patch(
    state: AccountState, contact: Contact, patch: ContactPatch, request_id: str
) -> tuple[Commit, list[ValidationIssue]]:
    issues: list[ValidationIssue] = []
    fields = _field_issues(
        state.contact_fields, contact.fields, patch.custom_fields_values, request_id, issues
    )
    if patch.responsible_user_id is not None and patch.responsible_user_id not in state.users:
        issues.append(
            ValidationIssue(request_id, "responsible_user_id", "User not found", "NotFound")
        )

    def commit() -> None:
        contact.fields = fields
        contact.first_name = (
            patch.first_name if patch.first_name is not None else contact.first_name
        )
        contact.last_name = patch.last_name if patch.last_name is not None else contact.last_name
        if patch.name is not None:
            contact.name = patch.name
        elif patch.first_name is not None or patch.last_name is not None:
            contact.name = f"{contact.first_name} {contact.last_name}".strip()
        if patch.responsible_user_id is not None:
            contact.responsible_user_id = patch.responsible_user_id
        contact.updated_at = int(time.time())

    return commit, issues


def _apply_all(prepared: Sequence[tuple[Commit, list[ValidationIssue]]]) -> None:
    # UNCONFIRMED whether Kommo applies the valid items of a refused list: the sandbox
    # applies none, the answer docs/kommo-api.md tells clients to assume.
    issues = [issue for _, item_issues in prepared for issue in item_issues]
    if issues:
        raise validation_problem(issues)
    for commit, _ in prepared:
        commit()


def _updated(request: Request, entity: str, entity_id: int, updated_at: int) -> JsonDict:
    return {
        "id": entity_id,
        "updated_at": updated_at,
        "_links": self_link(request, f"/api/v4/{entity}/{entity_id}"),
    }


@router.patch("/leads/{lead_id:int}")
async def patch_lead(
    lead_id: int, patch: LeadPatch, request: Request, sandbox: SandboxDep
) -> Response:
    lead = sandbox.state.leads.get(lead_id)
    if lead is None:
        raise KommoProblem(404, f"Lead {lead_id} not found")
    responsible = lead.responsible_user_id
    _apply_all([_prepare_lead_patch(sandbox.state, lead, patch, "0")])
    sandbox.activity.leads_edited([(lead, responsible)])
    return HalResponse(_updated(request, "leads", lead.id, lead.updated_at))


def _not_found(request_id: str, entity: str) -> tuple[Commit, list[ValidationIssue]]:
    return (lambda: None), [ValidationIssue(request_id, "id", f"{entity} not found", "NotFound")]


@router.patch("/leads")
async def patch_leads(
    items: list[LeadPatchItem], request: Request, sandbox: SandboxDep
) -> Response:
    """Many leads in one request; one invalid item refuses the whole request (none applied)."""
    state = sandbox.state
    request_ids = item_request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    prepared: list[tuple[Commit, list[ValidationIssue]]] = []
    leads: list[tuple[Lead, str]] = []
    for item, request_id in zip(items, request_ids, strict=True):
        lead = state.leads.get(item.id)
        if lead is None:
            prepared.append(_not_found(request_id, "Lead"))
            continue
        prepared.append(_prepare_lead_patch(state, lead, item, request_id))
        leads.append((lead, request_id))
    responsible = [lead.responsible_user_id for lead, _ in leads]
    _apply_all(prepared)
    sandbox.activity.leads_edited(
        [(lead, before) for (lead, _), before in zip(leads, responsible, strict=True)]
    )
    rendered = [
        {**_updated(request, "leads", lead.id, lead.updated_at), "request_id": request_id}
        for lead, request_id in leads
    ]
    return HalResponse(
        {"_links": self_link(request, "/api/v4/leads"), "_embedded": {"leads": rendered}}
    )


@router.get("/contacts")
async def list_contacts(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    base = base_url(request)
    leads = _leads_of_contacts(request, state)
    wanted = int_filter(request, "id")
    contacts = [c for c in state.contacts.values() if not wanted or c.id in wanted]
    return hal_list(
        request,
        "contacts",
        contacts,
        lambda contact: render_contact(
            contact, state, base, None if leads is None else leads.get(contact.id, [])
        ),
        PageRequest.from_query(request),
    )


@router.get("/contacts/{contact_id:int}")
async def get_contact(contact_id: int, request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    contact = state.contacts.get(contact_id)
    if contact is None:
        return no_content()
    leads = _leads_of_contacts(request, state)
    lead_ids = None if leads is None else leads.get(contact.id, [])
    return HalResponse(render_contact(contact, state, base_url(request), lead_ids))


def _leads_of_contacts(request: Request, state: AccountState) -> dict[int, list[int]] | None:
    """With `with=leads`, every contact's leads (one pass over the leads per request, not
    one per contact); None when not asked."""
    return state.leads_of_contacts() if "leads" in with_values(request) else None


@router.patch("/contacts/{contact_id:int}")
async def patch_contact(
    contact_id: int, patch: ContactPatch, request: Request, sandbox: SandboxDep
) -> Response:
    contact = sandbox.state.contacts.get(contact_id)
    if contact is None:
        raise KommoProblem(404, f"Contact {contact_id} not found")
    responsible = contact.responsible_user_id
    _apply_all([_prepare_contact_patch(sandbox.state, contact, patch, "0")])
    sandbox.activity.contacts_edited([(contact, responsible)])
    return HalResponse(_updated(request, "contacts", contact.id, contact.updated_at))


@router.patch("/contacts")
async def patch_contacts(
    items: list[ContactPatchItem], request: Request, sandbox: SandboxDep
) -> Response:
    state = sandbox.state
    request_ids = item_request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    prepared: list[tuple[Commit, list[ValidationIssue]]] = []
    contacts: list[tuple[Contact, str]] = []
    for item, request_id in zip(items, request_ids, strict=True):
        contact = state.contacts.get(item.id)
        if contact is None:
            prepared.append(_not_found(request_id, "Contact"))
            continue
        prepared.append(_prepare_contact_patch(state, contact, item, request_id))
        contacts.append((contact, request_id))
    responsible = [contact.responsible_user_id for contact, _ in contacts]
    _apply_all(prepared)
    sandbox.activity.contacts_edited(
        [(contact, before) for (contact, _), before in zip(contacts, responsible, strict=True)]
    )
    rendered = [
        {**_updated(request, "contacts", c.id, c.updated_at), "request_id": request_id}
        for c, request_id in contacts
    ]
    return HalResponse(
        {"_links": self_link(request, "/api/v4/contacts"), "_embedded": {"contacts": rendered}}
    )
