"""Forged envelopes: what anyone who finds the workflow's Production URL could POST. Without
the Webhook node's header n8n refuses them and runs nothing; with it, the calls that carry
the bridge's key still go only to the bridge, never to the URLs the envelope names."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from devstack.n8n_check.check import (
    LEAD_FORGED,
    REPLY_TIMEOUT_SECONDS,
    SETTLE_SECONDS,
    Check,
    Outcome,
    wait_until,
)

# The workflow's nodes that carry the bridge's key, first on each forged path.
REPLY_NODE = "Enviar resposta ao bridge"
STATUS_NODE = "Informar agenda gravada ao bridge"


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
