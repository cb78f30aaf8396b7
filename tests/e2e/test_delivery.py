"""Getting replies to customers through Kommo exactly once, whatever Kommo does.

A Salesbot run of unknown outcome (5xx before or after sending) is proven against the
gateway alone in test_reply_evidence.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, envelopes, wait_for


def _faults(http: httpx.Client, stack: Stack, **faults: Any) -> None:
    http.post(f"{stack.sandbox_url}/_sandbox/faults", json=faults).raise_for_status()


def _outgoing(http: httpx.Client, stack: Stack, lead: int, text: str) -> list[dict[str, Any]]:
    return [
        m for m in chat(http, stack, lead) if m["direction"] == "outgoing" and text in m["text"]
    ]


def _conversation_for(http: httpx.Client, stack: Stack, lead: int, text: str) -> None:
    """Start a conversation on the lead with the stand-in's automatic answer."""
    customer_writes(http, stack, lead, text)
    wait_for(lambda: _outgoing(http, stack, lead, text), what="first reply")


def _send(http: httpx.Client, stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return http.post(
        f"{stack.edge_url}/send-response", json=body, headers={"X-API-Key": stack.api_key}
    )


def test_replies_to_one_lead_never_overwrite_each_other(stack: Stack, http: httpx.Client) -> None:
    lead = 9100009
    _conversation_for(http, stack, lead, "vou receber várias respostas")
    texts = [f"resposta paralela número {i}" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        answers = list(
            pool.map(
                lambda t: _send(http, stack, {"lead_id": lead, "text": t, "idempotency_key": t}),
                texts,
            )
        )
    assert [a.status_code for a in answers] == [200, 200, 200]
    for text in texts:
        wait_for(lambda t=text: _outgoing(http, stack, lead, t), what=text)  # type: ignore[misc]
        assert len(_outgoing(http, stack, lead, text)) == 1, chat(http, stack, lead)


def test_kommo_rate_limit_answers_are_waited_out(stack: Stack, http: httpx.Client) -> None:
    lead = 9100013
    _faults(
        http,
        stack,
        fail_next=[{"path_prefix": f"/api/v4/leads/{lead}", "status": 429, "count": 2}],
    )
    text = "mensagem com o Kommo reclamando de excesso"
    customer_writes(http, stack, lead, text)
    wait_for(lambda: _outgoing(http, stack, lead, text), timeout=15, what="reply")
    envelope = next(
        e for e in envelopes(http, stack) if e["messages"] and e["messages"][0]["text"] == text
    )
    assert envelope["lead"]["name"], "the lead was read after the 429s"
