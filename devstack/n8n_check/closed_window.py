"""WhatsApp's 24-hour window, closed: a form lead whose customer never wrote gets the
proactive template from n8n, never free text; the helpers the closed-window paths share
(the bot rules with their templates, a new lead, what the workflow's nodes gave, the one
template the customer got). The agendamento of such a lead is in `scheduling.py`."""

from __future__ import annotations

import time
from typing import Any

from devstack.n8n_check.check import (
    REPLY_TIMEOUT_SECONDS,
    SETTLE_SECONDS,
    Check,
    Outcome,
    wait_until,
)
from devstack.stack import SANDBOX_TEMPLATE_RULES
from sandbox.kommo.config import SELLER_NAME_FIELD_ID, TEMPLATE_FORM_WELCOME_ID

# WhatsApp's 24-hour window: the nodes that answer with a template, and those that must
# not run then.
PROACTIVE_TEMPLATE_NODE = "Enviar modelo proativo ao bridge"
PROACTIVE_AGENT = "Agente proativo"
SCHEDULING_TEMPLATE_NODE = "Confirmar agendamento com modelo"
SCHEDULING_TEXT_NODE = "Confirmar agendamento ao cliente"
# Every replica applies rules changed through the API within BOT_RULES_REFRESH_SECONDS
# (1 s by default).
RULES_APPLIED_SECONDS = 1.5


def _lead_field(lead: dict[str, Any], field_id: int) -> str:
    for field_ in lead.get("custom_fields_values") or []:
        if field_.get("field_id") == field_id:
            return " ".join(str(v.get("value", "")) for v in field_.get("values") or [])
    return ""


def with_templates(check: Check) -> str:
    """The bot rules get the WhatsApp templates ("" when they did, else why not)."""
    with check.edge() as api:
        rules = api.put("/bot-rules", json=SANDBOX_TEMPLATE_RULES)
    if rules.status_code != 200:
        return f"PUT /bot-rules: {rules.status_code} {rules.text}"
    time.sleep(RULES_APPLIED_SECONDS)
    return ""


def lead_who_never_wrote(check: Check, name: str) -> int:
    """A new lead in the sandbox (a form, an ad): its customer never wrote, so WhatsApp's
    window is closed to free text."""
    created = check.http.post(
        f"{check.stack.sandbox_url}/_sandbox/lead-event", json={"kind": "add", "name": name}
    )
    created.raise_for_status()
    return int(created.json()["lead_id"])


def node_outputs(check: Check, executions_before: set[int]) -> list[dict[str, Any]]:
    """What the nodes of each execution since then gave, once they all finished."""

    def finished() -> list[int]:
        new = [e for e in check.n8n.executions() if e.id not in executions_before]
        return [e.id for e in new] if new and all(e.finished for e in new) else []

    return [check.n8n.nodes_run(i) for i in wait_until(finished, REPLY_TIMEOUT_SECONDS) or []]


def one_template(
    check: Check, lead: int, template_id: int, outputs: list[dict[str, Any]], node: str
) -> tuple[list[str], str]:
    """The customer got exactly one message, template `template_id` with its markers
    filled, sent by the workflow's `node` (once); no free text went into a closed window.
    (problems, the message's text)"""
    sent = check.outgoing_messages(lead)
    problems = []
    if len(sent) != 1:
        problems.append(f"{len(sent)} messages to the customer instead of 1: {sent}")
    message = sent[0] if sent else {}
    if message.get("via") != "template" or message.get("template_id") != template_id:
        problems.append(
            f"the message went via {message.get('via')!r} (template "
            f"{message.get('template_id')}), not template {template_id}"
        )
    if message.get("delivered") is not True:
        problems.append(f"not delivered ({message.get('failure')})")
    text = str(message.get("text", ""))
    if "{{" in text:
        problems.append(f"markers not filled: {text!r}")
    ran = sum(node in o for o in outputs)
    if ran != 1:
        problems.append(f"{node} ran {ran} times, not once")
    if closed := check.closed_window_sends():
        problems.append(f"{len(closed)} free-text message(s) sent into a closed window")
    return problems, text


def bridge_said(outputs: list[dict[str, Any]], node: str) -> str:
    """The statuses the bridge answered the workflow's `node` with."""
    return ", ".join(str(item.get("status")) for o in outputs for item in o.get(node, []))


def proactive_closed_window(check: Check) -> Outcome:
    """A form lead whose customer never wrote: WhatsApp delivers no free text to them. The
    bridge's envelope says the window is closed and offers the proactive template; the
    workflow answers with it, without calling the model, and the customer gets exactly
    that template, its markers filled. (The bot rules get their templates here; the paths
    after this one run with them.)"""
    name = "proactive, form lead who never wrote"
    if error := with_templates(check):
        return Outcome(name, False, 0.0, error)
    lead = lead_who_never_wrote(check, "Formulário do site")
    calls_before = len(check.model_calls())
    executions_before = {e.id for e in check.n8n.executions()}
    started = time.monotonic()
    with check.edge() as api:
        answer = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    if answer.status_code != 201:
        return Outcome(name, False, 0.0, f"/start-proactive: {answer.status_code} {answer.text}")
    first = wait_until(lambda: check.outgoing_messages(lead), REPLY_TIMEOUT_SECONDS)
    seconds = time.monotonic() - started
    if not first:
        return Outcome(name, False, seconds, f"nothing reached the customer in {seconds:.0f} s")
    time.sleep(SETTLE_SECONDS)  # a second message (free text, a fallback) would show by now
    outputs = node_outputs(check, executions_before)
    calls = check.model_calls()[calls_before:]
    problems, text = one_template(
        check, lead, TEMPLATE_FORM_WELCOME_ID, outputs, PROACTIVE_TEMPLATE_NODE
    )
    seller = _lead_field(check.lead(lead)["lead"], SELLER_NAME_FIELD_ID)
    if not seller or seller not in text:
        problems.append(f"the vendedor's name is not in the template: {text!r}")
    if calls:
        problems.append(f"{len(calls)} model call(s) for a template")
    if any(PROACTIVE_AGENT in o for o in outputs):
        problems.append(f"{PROACTIVE_AGENT} ran")
    if problems:
        return Outcome(name, False, seconds, "; ".join(problems), calls)
    said = bridge_said(outputs, PROACTIVE_TEMPLATE_NODE)
    return Outcome(
        name,
        True,
        seconds,
        f"n8n answered the template (bridge: {said}); 1 message via template "
        f"{TEMPLATE_FORM_WELCOME_ID}, markers filled; no free text into a closed window",
        calls,
    )
