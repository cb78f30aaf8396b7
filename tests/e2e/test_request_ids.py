"""One id for one flow: a customer's message gets a request id at the edge's webhook,
and every log line on its way — the worker that applies it, the turn, the envelope to
n8n, n8n's reply through the edge, the delivery to Kommo in the gateway — carries it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for


@pytest.fixture(scope="module")
def flow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory, "request-ids", scale={"conversation": 2, "kommo_gateway": 2}
    ) as running:
        yield running


def log_lines(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    lines = []
    for name, processes in stack.services.items():
        for process in processes:
            for line in process.log().splitlines():
                if line.startswith("{"):
                    lines.append((name, json.loads(line)))
    return lines


def test_every_log_line_of_a_message_and_its_reply_carries_one_request_id(
    flow_stack: Stack, http: httpx.Client
) -> None:
    stack = flow_stack
    customer_writes(http, stack, 9100003, "Quero falar sobre a minha aposentadoria")
    envelope = wait_for(
        lambda: next(
            (
                r
                for r in http.get(f"{stack.standin_url}/_standin/received").json()["received"]
                if r["body"]["messages"][0]["text"].startswith("Quero falar")
            ),
            None,
        ),
        what="the envelope at n8n",
    )
    rid = envelope["headers"]["x-request-id"]
    assert rid.startswith("wh-")
    wait_for(
        lambda: any(m["author_type"] == "bot" for m in chat(http, stack, 9100003)),
        what="the reply in the chat",
    )

    def flow_lines() -> list[tuple[str, str]] | None:
        found = [(svc, e["msg"]) for svc, e in log_lines(stack) if e.get("request_id") == rid]
        wanted = [
            ("conversation", "turn for n8n"),
            ("conversation", "envelope delivered to n8n"),
            ("edge_api", "POST /send-response 200"),
            ("kommo_gateway", "message for the customer sent"),
            ("conversation", "reply delivered to Kommo"),
        ]
        return found if all(w in found for w in wanted) else None

    found = wait_for(flow_lines, what=f"every step of the flow logged under {rid}")
    # The request id is the flow's own: no other message's lines share it.
    others = [e for _, e in log_lines(stack) if e.get("request_id", "").startswith("wh-")]
    assert {e["request_id"] for e in others} == {rid}, found
    assert len(envelopes(http, stack)) == 1


def test_an_api_call_without_an_id_gets_one_and_a_given_id_is_kept(
    flow_stack: Stack, http: httpx.Client
) -> None:
    headers = {"X-API-Key": flow_stack.api_key, "X-Request-ID": "ops-check-42"}
    answer = http.post(
        f"{flow_stack.edge_url}/bot-control",
        json={"action": "status", "lead_id": 9100003},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "ops-check-42"

    def logged() -> bool:
        return any(
            svc == "edge_api" and e.get("request_id") == "ops-check-42"
            for svc, e in log_lines(flow_stack)
        )

    wait_for(logged, what="the edge's line under the given id")
