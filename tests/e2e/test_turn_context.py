"""A customer writing again soon is answered without asking the gateway and the vendedor
service again: the turn's lead, contact and vendedor are this replica's copies
(CONTEXT_CACHE_SECONDS). A lead Kommo moves to another stage, and an erasure, drop them at
once."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

LEAD = 9100006
MOVED_TO = 71000002


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One conversation replica: every turn meets the same copies.
    with isolated_stack(tmp_path_factory, "turn-context") as running:
        yield running


def calls(stack: Stack, service: str, method: str) -> int:
    """The gRPC calls `service` has served of `method`, every outcome."""
    total = 0
    for process in stack.services[service]:
        text = httpx.get(f"http://127.0.0.1:{process.metrics_port}/metrics").text
        for found in re.finditer(
            rf'^bridge_grpc_requests_total{{[^}}]*method="{method}"[^}}]*}} (\S+)$', text, re.M
        ):
            total += int(float(found.group(1)))
    return total


def reads(stack: Stack) -> tuple[int, int, int]:
    return (
        calls(stack, "kommo_gateway", "GetLead"),
        calls(stack, "kommo_gateway", "GetContact"),
        calls(stack, "vendedor", "GetVendedor"),
    )


def answered(http: httpx.Client, stack: Stack, text: str) -> None:
    customer_writes(http, stack, LEAD, text)
    wait_for(
        lambda: any(
            m["direction"] == "outgoing" and text in m["text"] for m in chat(http, stack, LEAD)
        ),
        20,
        f"the answer to {text!r}",
    )


def test_a_warm_turn_asks_nothing_and_a_stage_change_reads_the_lead_again(stack: Stack) -> None:
    with httpx.Client(timeout=10) as http:
        answered(http, stack, "Oi, primeira mensagem")
        first = reads(stack)
        assert all(first), f"the first turn read the lead, contact and vendedor: {first}"

        answered(http, stack, "Oi, segunda mensagem")
        assert reads(stack) == first, "the second turn asked again"

        moved = http.post(
            f"{stack.sandbox_url}/_sandbox/lead-event",
            json={"kind": "status", "lead_id": LEAD, "status_id": MOVED_TO},
        )
        moved.raise_for_status()
        # The change is published before Kommo's webhook is acknowledged; every replica
        # hears it a moment later.
        time.sleep(0.5)
        answered(http, stack, "Oi, terceira mensagem")
        lead_reads, contact_reads, vendedor_reads = reads(stack)
        assert lead_reads > first[0], "the moved lead was not read again"
        assert (contact_reads, vendedor_reads) == first[1:]

        erased = http.delete(
            f"{stack.edge_url}/leads/{LEAD}/data", headers={"X-API-Key": stack.api_key}
        )
        assert erased.status_code == 200, erased.text
        time.sleep(0.5)
        before = reads(stack)
        answered(http, stack, "Oi, depois de apagar")
        after = reads(stack)
        assert after[0] > before[0] and after[1] > before[1], "an erased copy was used"
