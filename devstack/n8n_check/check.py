"""What every path of the check is given and gives back: `Check` (the stack, n8n, the
doubles of OpenAI and Supabase and the attacker's listener, with the calls that read them),
the sandbox lead each path keeps to, how long a path waits, and its `Outcome`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from devstack.n8n_check.attacker import Attacker
from devstack.n8n_check.n8n import N8n
from devstack.n8n_check.privacy import ModelCall, leaks
from devstack.stack import Stack

T = TypeVar("T")

# The sandbox's seeded leads (sandbox/kommo/seed.py), one per path so none disturbs
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
# After the reply: long enough for a second, duplicate reply to show up.
SETTLE_SECONDS = 4.0
POLL_SECONDS = 0.25


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


def new_replies(check: Check, lead_id: int, before: int, words: str) -> list[str]:
    return [t for t in check.outgoing(lead_id)[before:] if words in t]


def describe_calls(calls: list[ModelCall], secrets: list[str]) -> str:
    """What the model was sent on a path: sizes, and whether anything leaked."""
    if not calls:
        return "model: not called"
    streamed = sum(c.streamed for c in calls)
    sizes = ", ".join(f"system {c.system_chars:,} + user {c.user_chars:,} chars" for c in calls)
    found = sorted({leak for c in calls for leak in leaks(c, secrets)})
    clean = "LEAKED " + ", ".join(found) if found else "no phone/e-mail/URL/token/file"
    return f"model: {len(calls)} call(s), {streamed} streamed, {sizes}; {clean}"
