"""Kommo REST API v4: notes on leads and tasks, added in batches and listed.

The gate has already checked the bearer token and the rate limit when a handler runs.
"""

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import NoteIn, TaskIn
from sandbox.kommo.query import filter_values, int_filter, item_request_ids
from sandbox.kommo.records import Note, Task
from sandbox.kommo.render import TASK_TYPE_IDS, render_note, render_task
from sandbox.kommo.responses import (
    MAX_WRITE_ITEMS,
    HalResponse,
    JsonDict,
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


def _add_notes(
    state: AccountState, items: list[NoteIn], lead_id: int | None
) -> list[tuple[Note, str]]:
    request_ids = item_request_ids(items)
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
    wanted_types = set(filter_values(request, "note_type"))
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
    request_ids = item_request_ids(items)
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
    entity_ids = int_filter(request, "entity_id")
    entity_types = set(filter_values(request, "entity_type"))
    responsible = int_filter(request, "responsible_user_id")

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
