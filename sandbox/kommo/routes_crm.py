"""Kommo REST API v4: account, users, leads, contacts, notes, tasks, events, webhooks.

The gate has already checked the bearer token and the rate limit when a handler runs.
"""

import time
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import (
    ContactPatch,
    ContactPatchItem,
    CustomFieldIn,
    LeadPatch,
    LeadPatchItem,
    NoteIn,
    TaskIn,
    WebhookSubscribeIn,
    WebhookUnsubscribeIn,
)
from sandbox.kommo.render import (
    TASK_TYPE_IDS,
    render_account,
    render_contact,
    render_event,
    render_field_definition,
    render_lead,
    render_note,
    render_pipeline,
    render_subscription,
    render_task,
    render_user,
)
from sandbox.kommo.responses import (
    MAX_EVENTS_PAGE_LIMIT,
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
from sandbox.kommo.state import (
    AccountState,
    Contact,
    CustomFieldDef,
    FieldValues,
    FieldWriteError,
    Lead,
    Note,
    Task,
    WebhookSubscription,
    apply_field_writes,
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

Commit = Callable[[], None]


def _with(request: Request) -> set[str]:
    return {part.strip() for part in request.query_params.get("with", "").split(",") if part}


def _filter_values(request: Request, name: str) -> list[str]:
    """``filter[x]=a,b``, ``filter[x][]=a`` and ``filter[x][0]=a`` all name values of x."""
    key = f"filter[{name}]"
    values: list[str] = []
    for param, value in request.query_params.multi_items():
        if param == key or (param.startswith(key + "[") and param.endswith("]")):
            values += [part for part in value.split(",") if part]
    return values


def _int_filter(request: Request, name: str) -> set[int]:
    try:
        return {int(value) for value in _filter_values(request, name)}
    except ValueError as exc:
        raise validation_problem(
            [ValidationIssue("0", f"filter.{name}", "must be a number")]
        ) from exc


@router.get("/account")
async def get_account(request: Request, sandbox: SandboxDep) -> Response:
    return HalResponse(
        render_account(sandbox.state, base_url(request), "task_types" in _with(request))
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
    with_contacts = "contacts" in _with(request)
    wanted = _int_filter(request, "id")
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
    return HalResponse(render_lead(lead, state, base_url(request), "contacts" in _with(request)))


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


def _request_ids(items: Sequence[LeadPatchItem | ContactPatchItem | NoteIn | TaskIn]) -> list[str]:
    """Each item's ``request_id``: the one the client set, else its index as a string."""
    return [item.request_id or str(index) for index, item in enumerate(items)]


def _not_found(request_id: str, entity: str) -> tuple[Commit, list[ValidationIssue]]:
    return (lambda: None), [ValidationIssue(request_id, "id", f"{entity} not found", "NotFound")]


@router.patch("/leads")
async def patch_leads(
    items: list[LeadPatchItem], request: Request, sandbox: SandboxDep
) -> Response:
    """Many leads in one request; one invalid item refuses the whole request (none applied)."""
    state = sandbox.state
    request_ids = _request_ids(items)
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
    wanted = _int_filter(request, "id")
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
    return state.leads_of_contacts() if "leads" in _with(request) else None


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
    request_ids = _request_ids(items)
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


def _add_notes(
    state: AccountState, items: list[NoteIn], lead_id: int | None
) -> list[tuple[Note, str]]:
    request_ids = _request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    issues: list[ValidationIssue] = []
    for item, request_id in zip(items, request_ids, strict=True):
        entity_id = lead_id if lead_id is not None else item.entity_id
        if entity_id is None or entity_id not in state.leads:
            issues.append(ValidationIssue(request_id, "entity_id", "Lead not found", "NotFound"))
        if item.note_type == "common" and not str(item.params.get("text") or "").strip():
            issues.append(
                ValidationIssue(request_id, "params.text", "This field is missing.", "FieldMissing")
            )
    if issues:
        raise validation_problem(issues)
    now = int(time.time())
    added: list[tuple[Note, str]] = []
    for item, request_id in zip(items, request_ids, strict=True):
        entity_id = lead_id if lead_id is not None else item.entity_id
        assert entity_id is not None  # checked above
        note = Note(
            id=state.note_ids.take(),
            entity_id=entity_id,
            entity_type="leads",
            note_type=item.note_type,
            params=dict(item.params),
            created_at=now,
            created_by=item.created_by or state.admin.id,
            responsible_user_id=item.responsible_user_id
            or state.leads[entity_id].responsible_user_id,
        )
        state.notes.append(note)
        added.append((note, request_id))
    return added


def _notes_answer(request: Request, added: list[tuple[Note, str]], path: str) -> Response:
    base = base_url(request)
    rendered = [
        {
            "id": note.id,
            "entity_id": note.entity_id,
            "request_id": request_id,
            "_links": {"self": {"href": f"{base}/api/v4/leads/{note.entity_id}/notes/{note.id}"}},
        }
        for note, request_id in added
    ]
    return HalResponse({"_links": self_link(request, path), "_embedded": {"notes": rendered}})


@router.post("/leads/{lead_id:int}/notes")
async def add_lead_notes(
    lead_id: int, items: list[NoteIn], request: Request, sandbox: SandboxDep
) -> Response:
    added = _add_notes(sandbox.state, items, lead_id)
    return _notes_answer(request, added, f"/api/v4/leads/{lead_id}/notes")


@router.post("/leads/notes")
async def add_notes(items: list[NoteIn], request: Request, sandbox: SandboxDep) -> Response:
    return _notes_answer(request, _add_notes(sandbox.state, items, None), "/api/v4/leads/notes")


def _notes_list(request: Request, state: AccountState, lead_id: int | None) -> Response:
    base = base_url(request)
    notes = [note for note in state.notes if lead_id is None or note.entity_id == lead_id]
    wanted_types = set(_filter_values(request, "note_type"))
    notes = [note for note in notes if not wanted_types or note.note_type in wanted_types]
    return hal_list(
        request,
        "notes",
        notes,
        lambda note: render_note(note, state, base),
        PageRequest.from_query(request),
    )


@router.get("/leads/{lead_id:int}/notes")
async def list_lead_notes(lead_id: int, request: Request, sandbox: SandboxDep) -> Response:
    return _notes_list(request, sandbox.state, lead_id)


@router.get("/leads/notes")
async def list_notes(request: Request, sandbox: SandboxDep) -> Response:
    return _notes_list(request, sandbox.state, None)


def _task_issues(state: AccountState, item: TaskIn, request_id: str) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    if not item.text.strip():
        issues.append(ValidationIssue(request_id, "text", "This field is missing.", "FieldMissing"))
    if item.task_type_id not in TASK_TYPE_IDS:
        issues.append(
            ValidationIssue(request_id, "task_type_id", "Task type not found", "NotFound")
        )
    if item.responsible_user_id is not None and item.responsible_user_id not in state.users:
        issues.append(
            ValidationIssue(request_id, "responsible_user_id", "User not found", "NotFound")
        )
    if item.entity_type not in (None, "leads", "contacts"):
        issues.append(ValidationIssue(request_id, "entity_type", "Unknown entity type"))
    entities: dict[str, set[int]] = {"leads": set(state.leads), "contacts": set(state.contacts)}
    if (
        item.entity_type in entities
        and item.entity_id is not None
        and item.entity_id not in entities[item.entity_type or ""]
    ):
        issues.append(ValidationIssue(request_id, "entity_id", "Entity not found", "NotFound"))
    return issues


@router.post("/tasks")
async def add_tasks(items: list[TaskIn], request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    request_ids = _request_ids(items)
    check_batch_size(request_ids, MAX_WRITE_ITEMS)
    issues = [
        issue
        for item, request_id in zip(items, request_ids, strict=True)
        for issue in _task_issues(state, item, request_id)
    ]
    if issues:
        raise validation_problem(issues)
    now = int(time.time())
    base = base_url(request)
    rendered: list[JsonDict] = []
    for item, request_id in zip(items, request_ids, strict=True):
        task = Task(
            id=state.task_ids.take(),
            text=item.text,
            complete_till=item.complete_till,
            entity_id=item.entity_id,
            entity_type=item.entity_type,
            responsible_user_id=item.responsible_user_id or state.admin.id,
            task_type_id=item.task_type_id,
            created_at=now,
            created_by=state.admin.id,
            duration=item.duration,
        )
        state.tasks[task.id] = task
        rendered.append(
            {
                "id": task.id,
                "request_id": request_id,
                "_links": {"self": {"href": f"{base}/api/v4/tasks/{task.id}"}},
            }
        )
    return HalResponse(
        {"_links": self_link(request, "/api/v4/tasks"), "_embedded": {"tasks": rendered}}
    )


@router.get("/tasks")
async def list_tasks(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    base = base_url(request)
    entity_ids = _int_filter(request, "entity_id")
    entity_types = set(_filter_values(request, "entity_type"))
    responsible = _int_filter(request, "responsible_user_id")

    def wanted(task: Task) -> bool:
        return (
            (not entity_ids or task.entity_id in entity_ids)
            and (not entity_types or task.entity_type in entity_types)
            and (not responsible or task.responsible_user_id in responsible)
        )

    tasks = [task for task in state.tasks.values() if wanted(task)]
    return hal_list(
        request,
        "tasks",
        tasks,
        lambda task: render_task(task, state, base),
        PageRequest.from_query(request),
    )


@router.get("/tasks/{task_id:int}")
async def get_task(task_id: int, request: Request, sandbox: SandboxDep) -> Response:
    task = sandbox.state.tasks.get(task_id)
    if task is None:
        return no_content()
    return HalResponse(render_task(task, sandbox.state, base_url(request)))


@router.get("/events")
async def list_events(request: Request, sandbox: SandboxDep) -> Response:
    state = sandbox.state
    base = base_url(request)
    entities = {value.rstrip("s") for value in _filter_values(request, "entity")}
    entity_ids = _int_filter(request, "entity_id")
    types = set(_filter_values(request, "type"))
    authors = _int_filter(request, "created_by")
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
    destinations = set(_filter_values(request, "destination"))
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
