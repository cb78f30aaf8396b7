"""The paths a customer's conversation takes through the bridge and the real n8n, each
driven through the Kommo sandbox or the edge API and judged by what the customer, Kommo,
the bridge and Supabase end up with.

Here: the conversation's own paths (a message, a second turn, a burst, a proactive start,
n8n down, a handoff) and `PATHS`, the order every path runs in. The agendamento paths are
in `scheduling.py`, WhatsApp's closed window in `closed_window.py`, the forged envelopes in
`forged.py`; what a path is given and gives back in `check.py`."""

from __future__ import annotations

import time
from collections.abc import Callable

from devstack.n8n_check.check import (
    LEAD_BURST,
    LEAD_HANDOFF,
    LEAD_MESSAGE,
    LEAD_N8N_DOWN,
    LEAD_PROACTIVE,
    REPLY_TIMEOUT_SECONDS,
    SETTLE_SECONDS,
    Check,
    Outcome,
    new_replies,
    wait_until,
)
from devstack.n8n_check.closed_window import proactive_closed_window
from devstack.n8n_check.forged import forged_callback_url, forged_without_auth, forged_wrong_auth
from devstack.n8n_check.scheduling import (
    scheduling_closed_window,
    scheduling_in_conversation,
    scheduling_new_lead,
    scheduling_redelivered,
    scheduling_supabase_fails,
)

# n8n down: the bridge retries at once, 1 s, 5 s, 30 s, 2 min…; n8n is back before 2 min.
N8N_DOWN_SECONDS = 10.0
N8N_DOWN_REPLY_TIMEOUT_SECONDS = 240.0
# Words of the answers the OpenAI double writes (openai_double.answer_for): they show a
# text came from the model.
MODEL_REPLY = "Obrigada por explicar"
MODEL_FIRST_MESSAGE = "Aqui é da Previdas"
MODEL_HANDOFF = "vai continuar o atendimento"


def _one_reply(
    check: Check, lead_id: int, before: int, words: str, started: float, timeout: float
) -> tuple[bool, float, str]:
    """Waits for the reply; (ok, seconds to it, what was seen)."""
    replies = wait_until(lambda: new_replies(check, lead_id, before, words), timeout)
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
