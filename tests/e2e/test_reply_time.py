"""The reply time the dashboard and /stats show is the one a customer waits: one reply,
timed from outside, reads as itself (within the 2 % of its bins), never as a bin's edge
and never with the second Kommo's created_at rounds away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

LEAD = 9100004
DEBOUNCE_SECONDS = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"MESSAGE_DEBOUNCE_SECONDS": str(DEBOUNCE_SECONDS)}
    with isolated_stack(tmp_path_factory, "reply-time", env=env) as running:
        yield running


def test_one_reply_reads_as_the_time_the_customer_waited(stack: Stack) -> None:
    with httpx.Client(timeout=10.0) as http:
        sent = time.monotonic()
        customer_writes(http, stack, LEAD, "Oi, quanto tempo leva?")
        wait_for(
            lambda: [m for m in chat(http, stack, LEAD) if m["direction"] == "outgoing"],
            30.0,
            "the bot's reply in the chat",
        )
        waited = time.monotonic() - sent
        stats = http.get(
            f"{stack.edge_url}/stats", params={"hours": 1}, headers={"X-API-Key": stack.api_key}
        ).json()
    window = stats["window"]
    assert window["replies"] == 1
    figures = {
        "median, 24 h": stats["median_reply_seconds"],
        "p50": window["reply_p50_seconds"],
        "p95": window["reply_p95_seconds"],
    }
    for name, seconds in figures.items():
        # Measured inside the bridge, from the webhook's ack to Kommo taking the reply:
        # at least the debounce, at most what the customer saw (within the bins' 2 %).
        assert DEBOUNCE_SECONDS * 0.98 <= seconds <= waited * 1.02, (name, seconds, waited)
    # One reply: every quantile is that reply.
    assert figures["p50"] == pytest.approx(figures["p95"], rel=0.001)
    assert figures["median, 24 h"] == pytest.approx(figures["p50"], rel=0.001)
