"""The paths a customer's conversation takes through the bridge and the real n8n, each
driven through the Kommo sandbox or the edge API and judged by what the customer, Kommo,
the bridge and Supabase end up with."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx

from devstack.n8n_check.attacker import Attacker
from devstack.n8n_check.n8n import N8n
from devstack.n8n_check.privacy import ModelCall, leaks
from devstack.stack import SANDBOX_TEMPLATE_RULES, Stack
from sandbox.kommo.config import (
    SELLER_NAME_FIELD_ID,
    TEMPLATE_FORM_WELCOME_ID,
    TEMPLATE_SCHEDULING_ID,
)

T = TypeVar("T")

# The sandbox's seeded leads (sandbox/kommo/state.py), one per path so none disturbs
# another; 9100008 never writes before its agendamento (a lead with no conversation).
LEAD_MESSAGE = 9100001
LEAD_BURST = 9100002
LEAD_PROACTIVE = 9100003
LEAD_N8N_DOWN = 9100006
LEAD_HANDOFF = 9100007
LEAD_NO_CONVERSATION = 9100008
# Named by the forged envelopes only: nothing must ever be sent to it.
LEAD_FORGED = 9100005
# The debounce is the bridge's default (3 s): a reply comes well within this.
REPLY_TIMEOUT_SECONDS = 60.0
# n8n down: the bridge retries at once, 1 s, 5 s, 30 s, 2 min…; n8n is back before 2 min.
N8N_DOWN_SECONDS = 10.0
N8N_DOWN_REPLY_TIMEOUT_SECONDS = 240.0
# After the reply: long enough for a second, duplicate reply to show up.
SETTLE_SECONDS = 4.0
POLL_SECONDS = 0.25
TIMEZONE = ZoneInfo("America/Sao_Paulo")
# Words of the answers the OpenAI double writes (openai_double.answer_for) and of the
# workflow's scheduling confirmation: they show a text came from the model / n8n.
MODEL_REPLY = "Obrigada por explicar"
MODEL_FIRST_MESSAGE = "Aqui é da Previdas"
MODEL_HANDOFF = "vai continuar o atendimento"
CONFIRMATION = "Recebemos o seu pedido de agendamento"
# The workflow's nodes that carry the bridge's key, first on each forged path.
REPLY_NODE = "Enviar resposta ao bridge"
STATUS_NODE = "Informar agenda gravada ao bridge"
# WhatsApp's 24-hour window: the nodes that answer with a template, and those that must
# not run then.
PROACTIVE_TEMPLATE_NODE = "Enviar modelo proativo ao bridge"
PROACTIVE_AGENT = "Agente proativo"
SCHEDULING_TEMPLATE_NODE = "Confirmar agendamento com modelo"
SCHEDULING_TEXT_NODE = "Confirmar agendamento ao cliente"
# Every replica applies rules changed through the API within BOT_RULES_REFRESH_SECONDS
# (1 s by default).
RULES_APPLIED_SECONDS = 1.5


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    detail: str
    calls: list[ModelCall] = field(default_factory=list)


@dataclass
class Check:
    """Everything a path talks to."""

    stack: Stack
    n8n: N8n
    openai_url: str
    supabase_url: str
    secrets: list[str]
    attacker: Attacker
    webhook_path: str
    webhook_auth: tuple[str, str]  # the header the Webhook node expects (N8N_AUTH_HEADER)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def edge(self) -> httpx.Client:
        """A client of the edge API with the bridge's key."""
        return httpx.Client(
            base_url=self.stack.edge_url, headers={"X-API-Key": self.stack.api_key}, timeout=30
        )

    def model_calls(self) -> list[ModelCall]:
        answer = self.http.get(f"{self.openai_url}/_double/requests")
        return [ModelCall(r["body"]) for r in answer.json()]

    def customer_writes(self, lead_id: int, text: str) -> None:
        self.http.post(
            f"{self.stack.sandbox_url}/_sandbox/customer-message",
            json={"lead_id": lead_id, "text": text},
        ).raise_for_status()

    def outgoing(self, lead_id: int) -> list[str]:
        return [m["text"] for m in self.outgoing_messages(lead_id)]

    def outgoing_messages(self, lead_id: int) -> list[dict[str, Any]]:
        """The sandbox chat's messages to the customer: `text`, `via` (`template` for a
        WhatsApp template, with its `template_id`), `delivered`."""
        chat = self.http.get(f"{self.stack.sandbox_url}/_sandbox/chats/{lead_id}").json()
        return [m for m in chat if m["direction"] == "outgoing"]

    def closed_window_sends(self) -> list[dict[str, Any]]:
        """Free text the sandbox, playing WhatsApp, refused: sent into a closed window."""
        sends = self.http.get(f"{self.stack.sandbox_url}/_sandbox/closed-window-sends").json()
        return list(sends)

    def lead(self, lead_id: int) -> dict[str, Any]:
        return dict(self.http.get(f"{self.stack.sandbox_url}/_sandbox/leads/{lead_id}").json())

    def agenda(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.supabase_url}/_double/rows").json())

    def supabase_faults(self, **faults: int) -> None:
        self.http.post(f"{self.supabase_url}/_double/faults", json=faults).raise_for_status()

    def post_to_n8n(self, envelope: dict[str, Any], headers: dict[str, str]) -> int:
        """POSTs an envelope to the workflow's Production URL as anyone could; the status."""
        url = self.n8n.webhook_url(self.webhook_path)
        return self.http.post(url, json=envelope, headers=headers).status_code


def wait_until(check: Callable[[], T | None], timeout: float) -> T | None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(POLL_SECONDS)


def _new_replies(check: Check, lead_id: int, before: int, words: str) -> list[str]:
    return [t for t in check.outgoing(lead_id)[before:] if words in t]


def _one_reply(
    check: Check, lead_id: int, before: int, words: str, started: float, timeout: float
) -> tuple[bool, float, str]:
    """Waits for the reply; (ok, seconds to it, what was seen)."""
    replies = wait_until(lambda: _new_replies(check, lead_id, before, words), timeout)
    seconds = time.monotonic() - started
    if not replies:
        seen = check.outgoing(lead_id)[before:]
        return False, seconds, f"no reply with {words!r} within {timeout:.0f} s (chat: {seen})"
    time.sleep(SETTLE_SECONDS)
    total = len(check.outgoing(lead_id)) - before
    if total != 1:
        return False, seconds, f"{total} messages to the customer instead of 1"
    return True, seconds, "1 reply in the chat"


def message(check: Check) -> Outcome:
    lead, text = LEAD_MESSAGE, "Oi, boa tarde! Quero saber se tenho direito à aposentadoria."
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    check.customer_writes(lead, text)
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_REPLY, started, REPLY_TIMEOUT_SECONDS
    )
    calls = check.model_calls()[calls_before:]
    if ok and not any(text in c.text() for c in calls):
        ok, detail = False, "the model was not sent the customer's message"
    return Outcome("message", ok, seconds, detail, calls)


def second_turn(check: Check) -> Outcome:
    """The same customer again: the history now holds the first turn, and the lead's
    reply field the bridge's last reply, which the prompt must leave out."""
    lead, text = LEAD_MESSAGE, "Nunca pedi nada ao INSS. Tenho 61 anos."
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    check.customer_writes(lead, text)
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_REPLY, started, REPLY_TIMEOUT_SECONDS
    )
    calls = check.model_calls()[calls_before:]
    history = f"Assistente: {check.outgoing(lead)[0]}"
    if ok and not any(history in c.text() for c in calls):
        ok, detail = False, "the model was not sent the first turn as history"
    elif ok:
        detail = "1 reply; the first turn in the history"
    return Outcome("message, second turn", ok, seconds, detail, calls)


def burst(check: Check) -> Outcome:
    lead = LEAD_BURST
    texts = [
        "Olá",
        "Meu auxílio-doença foi cortado pelo INSS",
        "O que eu posso fazer?",
    ]
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    for text in texts:
        check.customer_writes(lead, text)
        time.sleep(0.5)
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_REPLY, started, REPLY_TIMEOUT_SECONDS
    )
    calls = check.model_calls()[calls_before:]
    if ok and len(calls) != 1:
        ok, detail = False, f"{len(calls)} model calls for one burst"
    elif ok and not all(t in calls[0].text() for t in texts):
        ok, detail = False, "the model was not sent all 3 messages"
    elif ok:
        detail = "3 messages → 1 reply, all 3 in one model call"
    return Outcome("burst", ok, seconds, detail, calls)


def proactive(check: Check) -> Outcome:
    lead = LEAD_PROACTIVE
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    with check.edge() as api:
        answer = api.post("/start-proactive", json={"lead_id": lead, "trigger": "form"})
    if answer.status_code != 201:
        return Outcome("proactive", False, 0.0, f"/start-proactive: {answer.status_code}")
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_FIRST_MESSAGE, started, REPLY_TIMEOUT_SECONDS
    )
    if ok:
        detail = "n8n's first message in the chat"
    return Outcome("proactive", ok, seconds, detail, check.model_calls()[calls_before:])


def _lead_field(lead: dict[str, Any], field_id: int) -> str:
    for field_ in lead.get("custom_fields_values") or []:
        if field_.get("field_id") == field_id:
            return " ".join(str(v.get("value", "")) for v in field_.get("values") or [])
    return ""


def _with_templates(check: Check) -> str:
    """The bot rules get the WhatsApp templates ("" when they did, else why not)."""
    with check.edge() as api:
        rules = api.put("/bot-rules", json=SANDBOX_TEMPLATE_RULES)
    if rules.status_code != 200:
        return f"PUT /bot-rules: {rules.status_code} {rules.text}"
    time.sleep(RULES_APPLIED_SECONDS)
    return ""


def _lead_who_never_wrote(check: Check, name: str) -> int:
    """A new lead in the sandbox (a form, an ad): its customer never wrote, so WhatsApp's
    window is closed to free text."""
    created = check.http.post(
        f"{check.stack.sandbox_url}/_sandbox/lead-event", json={"kind": "add", "name": name}
    )
    created.raise_for_status()
    return int(created.json()["lead_id"])


def _node_outputs(check: Check, executions_before: set[int]) -> list[dict[str, Any]]:
    """What the nodes of each execution since then gave, once they all finished."""

    def finished() -> list[int]:
        new = [e for e in check.n8n.executions() if e.id not in executions_before]
        return [e.id for e in new] if new and all(e.finished for e in new) else []

    return [check.n8n.nodes_run(i) for i in wait_until(finished, REPLY_TIMEOUT_SECONDS) or []]


def _one_template(
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


def _bridge_said(outputs: list[dict[str, Any]], node: str) -> str:
    """The statuses the bridge answered the workflow's `node` with."""
    return ", ".join(str(item.get("status")) for o in outputs for item in o.get(node, []))


def proactive_closed_window(check: Check) -> Outcome:
    """A form lead whose customer never wrote: WhatsApp delivers no free text to them. The
    bridge's envelope says the window is closed and offers the proactive template; the
    workflow answers with it, without calling the model, and the customer gets exactly
    that template, its markers filled. (The bot rules get their templates here; the paths
    after this one run with them.)"""
    name = "proactive, form lead who never wrote"
    if error := _with_templates(check):
        return Outcome(name, False, 0.0, error)
    lead = _lead_who_never_wrote(check, "Formulário do site")
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
    outputs = _node_outputs(check, executions_before)
    calls = check.model_calls()[calls_before:]
    problems, text = _one_template(
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
    said = _bridge_said(outputs, PROACTIVE_TEMPLATE_NODE)
    return Outcome(
        name,
        True,
        seconds,
        f"n8n answered the template (bridge: {said}); 1 message via template "
        f"{TEMPLATE_FORM_WELCOME_ID}, markers filled; no free text into a closed window",
        calls,
    )


def scheduling_closed_window(check: Check) -> Outcome:
    """An agendamento for a lead whose customer never wrote: the scheduling envelope says
    the window is closed (its top-level `window`: there is no conversation yet) and offers
    `scheduling_confirmation`; the workflow confirms with that template, the slot in its
    `horario`, instead of the text."""
    name = "scheduling, lead who never wrote"
    if error := _with_templates(check):
        return Outcome(name, False, 0.0, error)
    lead = _lead_who_never_wrote(check, "Agendamento pelo site")
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
    outputs = _node_outputs(check, executions_before)
    calls = check.model_calls()[calls_before:]
    problems, text = _one_template(
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
    said = _bridge_said(outputs, SCHEDULING_TEMPLATE_NODE)
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
        lambda: _new_replies(check, lead, before, CONFIRMATION),
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


def n8n_down(check: Check) -> Outcome:
    lead = LEAD_N8N_DOWN
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    check.n8n.stop()
    started = time.monotonic()
    check.customer_writes(lead, "Oi, vocês atendem aposentadoria por invalidez?")
    time.sleep(N8N_DOWN_SECONDS)
    check.n8n.start()
    back = check.n8n.wait_ready(check.webhook_path)
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_REPLY, started, N8N_DOWN_REPLY_TIMEOUT_SECONDS
    )
    if ok:
        detail = f"n8n down {N8N_DOWN_SECONDS:.0f} s + {back:.0f} s to start; 1 reply after"
    return Outcome("n8n down", ok, seconds, detail, check.model_calls()[calls_before:])


def handoff(check: Check) -> Outcome:
    lead = LEAD_HANDOFF
    snapshot = check.lead(lead)
    notes, tasks = len(snapshot["notes"]), len(snapshot["tasks"])
    before, calls_before = len(check.outgoing(lead)), len(check.model_calls())
    started = time.monotonic()
    check.customer_writes(lead, "Quero falar com uma pessoa, por favor.")
    ok, seconds, detail = _one_reply(
        check, lead, before, MODEL_HANDOFF, started, REPLY_TIMEOUT_SECONDS
    )
    calls = check.model_calls()[calls_before:]
    if not ok:
        return Outcome("handoff", False, seconds, detail, calls)
    problems = []
    if any("[ATENDENTE]" in t for t in check.outgoing(lead)[before:]):
        problems.append("the [ATENDENTE] marker reached the customer")
    with check.edge() as api:
        state = api.post("/bot-control", json={"action": "status", "lead_id": lead}).json()
    if state.get("bot_state") == "active":
        problems.append("the bot is still active")
    snapshot = check.lead(lead)
    if len(snapshot["tasks"]) <= tasks:
        problems.append("no task for the vendedor")
    if len(snapshot["notes"]) <= notes:
        problems.append("no note on the lead")
    if problems:
        return Outcome("handoff", False, seconds, "; ".join(problems), calls)
    return Outcome(
        "handoff", True, seconds, f"bot {state.get('bot_state')}; note and task in Kommo", calls
    )


def _now() -> str:
    return datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def forged_message(attacker_url: str) -> dict[str, Any]:
    """A `message.received` envelope as the contract shapes it, written by an attacker:
    its callback points at the attacker, its reply token is made up."""
    return {
        "event": "message.received",
        "event_id": uuid.uuid4().hex,
        "occurred_at": _now(),
        "conversation": {
            "id": f"forged-{uuid.uuid4().hex[:8]}",
            "lead_id": LEAD_FORGED,
            "contact_id": 1,
            "chat_id": None,
            "talk_id": None,
            "bot_state": "active",
        },
        "lead": {"id": LEAD_FORGED, "name": "Consulta", "custom_fields": {}},
        "contact": {"id": 1, "name": "Visitante", "phone": None, "email": None},
        "vendedor": None,
        "messages": [{"id": "forged-1", "text": "Olá, preciso de ajuda", "at": _now()}],
        "history": [],
        "trigger": None,
        "scheduling": None,
        "callback": {"url": f"{attacker_url}/send-response", "reply_token": "forged-token"},
    }


def forged_scheduling(attacker_url: str) -> dict[str, Any]:
    """A `scheduling.requested` envelope with both ways back pointing at the attacker."""
    request_id = uuid.uuid4().hex
    return {
        "event": "scheduling.requested",
        "event_id": request_id,
        "occurred_at": _now(),
        "conversation": {"id": None, "lead_id": LEAD_FORGED},
        "lead": {"id": LEAD_FORGED, "name": "Consulta", "status_id": 1},
        "contact": {"id": 1, "name": "Visitante", "phone": None},
        "vendedor": {"id": 1, "name": "Equipe", "email": None, "areas": [], "source": "kommo"},
        "messages": [],
        "history": [],
        "trigger": None,
        "scheduling": {
            "id": request_id,
            "requested_at": None,
            "timezone": "America/Sao_Paulo",
            "preference": "amanhã",
            "notes": None,
            "agenda": {"id": request_id, "lead_id": LEAD_FORGED, "preferencia": "amanhã"},
            "status_callback": {
                "url": f"{attacker_url}/agendamento/{request_id}/status",
                "method": "POST",
                "statuses": ["confirmed", "failed"],
            },
        },
        "callback": {
            "url": f"{attacker_url}/send-response",
            "reply_token": None,
            "lead_id": LEAD_FORGED,
            "idempotency_key": f"agendamento:{request_id}",
        },
    }


def _refused(check: Check, name: str, headers: dict[str, str]) -> Outcome:
    """Forged envelopes without the Webhook's header: n8n answers 401/403 and runs
    nothing (no execution, no model call, no agenda row, nothing to the attacker)."""
    executions = len(check.n8n.executions())
    calls_before, rows_before = len(check.model_calls()), len(check.agenda()["rows"])
    stolen_before = len(check.attacker.received())
    started = time.monotonic()
    answers = [
        check.post_to_n8n(forge(check.attacker.url), headers)
        for forge in (forged_message, forged_scheduling)
    ]
    seconds = time.monotonic() - started
    time.sleep(SETTLE_SECONDS)  # anything the envelopes started would show by now
    calls = check.model_calls()[calls_before:]
    problems = []
    if any(status not in (401, 403) for status in answers):
        problems.append(f"n8n answered {answers}, not 401/403")
    if (ran := len(check.n8n.executions()) - executions) != 0:
        problems.append(f"{ran} workflow execution(s) started")
    if calls:
        problems.append(f"{len(calls)} model call(s)")
    if (rows := len(check.agenda()["rows"]) - rows_before) != 0:
        problems.append(f"{rows} agenda row(s) written")
    if stolen := check.attacker.received()[stolen_before:]:
        problems.append(f"the attacker got {len(stolen)} request(s)")
    if problems:
        return Outcome(name, False, seconds, "; ".join(problems), calls)
    return Outcome(name, True, seconds, f"refused ({answers}); nothing ran or was sent", calls)


def forged_without_auth(check: Check) -> Outcome:
    return _refused(check, "forged envelope, no auth header", {})


def forged_wrong_auth(check: Check) -> Outcome:
    header, _ = check.webhook_auth
    return _refused(check, "forged envelope, wrong auth header", {header: "not-the-secret"})


def _runs_against_the_bridge(
    check: Check, envelope: dict[str, Any], node: str
) -> tuple[bool, str, float]:
    """The envelope, sent with the right header, runs; the call that carries the bridge's
    key goes to BRIDGE_URL — the bridge answers 404 to the made-up token or id — and
    never to the URL the envelope names. (ok, what was seen, seconds)"""
    before = {e.id for e in check.n8n.executions()}
    started = time.monotonic()
    status = check.post_to_n8n(envelope, dict([check.webhook_auth]))
    if status != 200:
        return False, f"n8n answered {status} to an envelope with the right header", 0.0

    def finished() -> list[int]:
        new = [e for e in check.n8n.executions() if e.id not in before]
        return [e.id for e in new] if new and all(e.finished for e in new) else []

    ran = wait_until(finished, REPLY_TIMEOUT_SECONDS)
    seconds = time.monotonic() - started
    if not ran:
        return False, "the workflow did not finish", seconds
    errors = [check.n8n.execution_error(i) for i in ran]
    if not any(e.startswith(f"{node}:") and "[HTTP 404]" in e for e in errors):
        return False, f"{node} did not get the bridge's 404 ({errors})", seconds
    return True, f"{node} → the bridge (404)", seconds


def forged_callback_url(check: Check) -> Outcome:
    """The header does not make the envelope's URLs trusted: an envelope that passes it
    (a leaked header, say) and names an attacker's callback URLs still reaches only the
    bridge. The key never goes anywhere else."""
    name = "forged callback.url, right auth header"
    calls_before, stolen_before = len(check.model_calls()), len(check.attacker.received())
    results = [
        _runs_against_the_bridge(check, forged_message(check.attacker.url), REPLY_NODE),
        _runs_against_the_bridge(check, forged_scheduling(check.attacker.url), STATUS_NODE),
    ]
    seconds = sum(r[2] for r in results)
    calls = check.model_calls()[calls_before:]
    problems = [detail for ok, detail, _ in results if not ok]
    if stolen := check.attacker.received()[stolen_before:]:
        problems.append(f"the attacker got {len(stolen)} request(s)")
    if problems:
        return Outcome(name, False, seconds, "; ".join(problems), calls)
    seen = ", ".join(detail for _, detail, _ in results)
    return Outcome(name, True, seconds, f"{seen}; the attacker got nothing", calls)


PATHS: list[Callable[[Check], Outcome]] = [
    forged_without_auth,
    forged_wrong_auth,
    forged_callback_url,
    message,
    second_turn,
    burst,
    proactive,
    proactive_closed_window,
    scheduling_in_conversation,
    scheduling_new_lead,
    scheduling_closed_window,
    scheduling_redelivered,
    scheduling_supabase_fails,
    n8n_down,
    handoff,
]


def describe_calls(calls: list[ModelCall], secrets: list[str]) -> str:
    """What the model was sent on a path: sizes, and whether anything leaked."""
    if not calls:
        return "model: not called"
    streamed = sum(c.streamed for c in calls)
    sizes = ", ".join(f"system {c.system_chars:,} + user {c.user_chars:,} chars" for c in calls)
    found = sorted({leak for c in calls for leak in leaks(c, secrets)})
    clean = "LEAKED " + ", ".join(found) if found else "no phone/e-mail/URL/token/file"
    return f"model: {len(calls)} call(s), {streamed} streamed, {sizes}; {clean}"
