"""The agendamento paths: a scheduling request goes to n8n, which writes the agenda row in
Supabase, reports the status to the bridge and tells the customer — in a conversation, for
a lead without one, with the row already written, with Supabase failing, and for a lead
whose customer never wrote (WhatsApp's window closed: a template confirms)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from devstack.n8n_check.check import (
    LEAD_MESSAGE,
    LEAD_NO_CONVERSATION,
    REPLY_TIMEOUT_SECONDS,
    SETTLE_SECONDS,
    Check,
    Outcome,
    new_replies,
    wait_until,
)
from devstack.n8n_check.closed_window import (
    SCHEDULING_TEMPLATE_NODE,
    SCHEDULING_TEXT_NODE,
    bridge_said,
    lead_who_never_wrote,
    node_outputs,
    one_template,
    with_templates,
)
from sandbox.kommo.config import TEMPLATE_SCHEDULING_ID

TIMEZONE = ZoneInfo("America/Sao_Paulo")
# Words of the workflow's scheduling confirmation: they show a text came from n8n.
CONFIRMATION = "Recebemos o seu pedido de agendamento"


def scheduling_closed_window(check: Check) -> Outcome:
    """An agendamento for a lead whose customer never wrote: the scheduling envelope says
    the window is closed (its top-level `window`: there is no conversation yet) and offers
    `scheduling_confirmation`; the workflow confirms with that template, the slot in its
    `horario`, instead of the text."""
    name = "scheduling, lead who never wrote"
    if error := with_templates(check):
        return Outcome(name, False, 0.0, error)
    lead = lead_who_never_wrote(check, "Agendamento pelo site")
    calls_before = len(check.model_calls())
    executions_before = {e.id for e in check.n8n.executions()}
    slot = _slot(7)
    started = time.monotonic()
    with check.edge() as api:
        created = api.post("/agendamento/request", json={"lead_id": lead, "requested_at": slot})
        if created.status_code != 201:
            return Outcome(name, False, 0.0, f"/agendamento/request: {created.status_code}")
        agendamento_id = created.json()["id"]

        def final() -> dict[str, Any] | None:
            record = dict(api.get(f"/agendamento/{agendamento_id}").json())
            return record if record["status"] in ("confirmed", "failed") else None

        record = wait_until(final, REPLY_TIMEOUT_SECONDS)
    first = wait_until(lambda: check.outgoing_messages(lead), REPLY_TIMEOUT_SECONDS)
    seconds = time.monotonic() - started
    if not first:
        return Outcome(name, False, seconds, f"nothing reached the customer in {seconds:.0f} s")
    time.sleep(SETTLE_SECONDS)
    outputs = node_outputs(check, executions_before)
    calls = check.model_calls()[calls_before:]
    problems, text = one_template(
        check, lead, TEMPLATE_SCHEDULING_ID, outputs, SCHEDULING_TEMPLATE_NODE
    )
    if record is None or record["status"] != "confirmed":
        problems.append(f"agendamento {record and record['status']}, not confirmed")
    rows = [r for r in check.agenda()["rows"] if r.get("event_id") == agendamento_id]
    if len(rows) != 1:
        problems.append(f"{len(rows)} rows in the agenda table, not 1")
    horario = datetime.fromisoformat(slot).strftime("%d/%m/%Y às %H:%M")
    if horario not in text:
        problems.append(f"the slot {horario!r} is not in the template: {text!r}")
    if any(SCHEDULING_TEXT_NODE in o for o in outputs):
        problems.append(f"{SCHEDULING_TEXT_NODE} ran")
    if calls:
        problems.append(f"{len(calls)} model call(s) for a scheduling request")
    if problems:
        return Outcome(name, False, seconds, "; ".join(problems), calls)
    said = bridge_said(outputs, SCHEDULING_TEMPLATE_NODE)
    return Outcome(
        name,
        True,
        seconds,
        f"status confirmed; n8n confirmed with the template (bridge: {said}); 1 message via "
        f"template {TEMPLATE_SCHEDULING_ID} with {horario!r}; no free text into a closed window",
        calls,
    )


def _slot(days: int) -> str:
    when = datetime.now(TIMEZONE) + timedelta(days=days)
    return when.replace(hour=14, minute=30).strftime("%Y-%m-%dT%H:%M")


def _scheduling(
    check: Check,
    name: str,
    lead: int,
    days: int,
    expect_status: str,
    *,
    expect_row: bool,
    confirmed: bool,
) -> Outcome:
    """`confirmed`: the customer must be told (else: must not be)."""
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    with check.edge() as api:
        created = api.post(
            "/agendamento/request",
            json={"lead_id": lead, "requested_at": _slot(days), "notes": "Revisão do benefício"},
        )
        if created.status_code != 201:
            return Outcome(name, False, 0.0, f"/agendamento/request: {created.status_code}")
        agendamento_id = created.json()["id"]

        def final() -> dict[str, Any] | None:
            record = dict(api.get(f"/agendamento/{agendamento_id}").json())
            return record if record["status"] in ("confirmed", "failed") else None

        record = wait_until(final, REPLY_TIMEOUT_SECONDS)
        if record is None:
            status = api.get(f"/agendamento/{agendamento_id}").json()["status"]
    seconds = time.monotonic() - started
    calls = check.model_calls()[calls_before:]
    if record is None:
        return Outcome(name, False, seconds, f"status still {status!r}", calls)
    problems = []
    if record["status"] != expect_status:
        problems.append(
            f"status {record['status']!r} ({record.get('detail')}), not {expect_status!r}"
        )
    rows = [r for r in check.agenda()["rows"] if r.get("event_id") == agendamento_id]
    if len(rows) != int(expect_row):
        problems.append(f"{len(rows)} rows in the agenda table, not {int(expect_row)}")
    for row in rows:
        request = row.get("solicitacao")
        if str(row.get("lead_id")) != str(lead) or not isinstance(request, dict):
            problems.append("the agenda row lacks the lead or the request")
        elif request.get("id") != agendamento_id:
            problems.append("the agenda row holds another request")
    confirmations = wait_until(
        lambda: new_replies(check, lead, before, CONFIRMATION),
        REPLY_TIMEOUT_SECONDS if confirmed else SETTLE_SECONDS,
    )
    seconds_to_chat = time.monotonic() - started
    if confirmed and not confirmations:
        problems.append("no confirmation in the customer's chat")
    if not confirmed and confirmations:
        problems.append("the customer was told it is booked")
    if confirmations and len(check.outgoing(lead)) - before != 1:
        problems.append(f"{len(check.outgoing(lead)) - before} messages instead of 1")
    if calls:
        problems.append(f"{len(calls)} model call(s) for a scheduling request")
    if problems:
        return Outcome(name, False, seconds, "; ".join(problems), calls)
    told = (
        f"confirmation in the chat at {seconds_to_chat:.1f} s" if confirmations else "chat silent"
    )
    return Outcome(
        name, True, seconds, f"status {record['status']} ({record.get('detail')}); {told}", calls
    )


def scheduling_in_conversation(check: Check) -> Outcome:
    return _scheduling(
        check, "scheduling", LEAD_MESSAGE, 3, "confirmed", expect_row=True, confirmed=True
    )


def scheduling_new_lead(check: Check) -> Outcome:
    name = "scheduling, lead without conversation"
    return _scheduling(
        check, name, LEAD_NO_CONVERSATION, 4, "confirmed", expect_row=True, confirmed=True
    )


def scheduling_redelivered(check: Check) -> Outcome:
    # Supabase answers 409, as when an earlier delivery of the same event wrote the row.
    check.supabase_faults(conflict_next=1)
    name = "scheduling, row already written"
    return _scheduling(check, name, LEAD_MESSAGE, 5, "confirmed", expect_row=False, confirmed=True)


def scheduling_supabase_fails(check: Check) -> Outcome:
    check.supabase_faults(fail_next=1)
    name = "scheduling, Supabase fails"
    return _scheduling(check, name, LEAD_MESSAGE, 6, "failed", expect_row=False, confirmed=False)
