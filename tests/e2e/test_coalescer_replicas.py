"""Batching across real gateway processes: three replicas, the Kommo sandbox counting
requests. Concurrent lead reads sent to all three replicas leave in the list calls of
the one replica holding the dispatch lease, not in at least one per replica."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from devstack.stack import Stack
from tests.e2e.gateway_helpers import account, gateway_stack, sandbox_stats

FIRST_LEAD = 9100001
READS_PER_REPLICA = 6


@pytest.fixture(scope="module")
def replicas_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One request a second: a departure comes a second after the one before, so reads
    # arriving together leave together (the first may leave alone at once).
    with gateway_stack(tmp_path_factory, "replicas", {"KOMMO_RATE_LIMIT_RPS": "1"}, {}) as running:
        yield running


def test_reads_on_three_replicas_are_answered_with_the_list_calls_of_one(
    replicas_stack: Stack,
) -> None:
    addresses = [g.address for g in replicas_stack.services["kommo_gateway"]]
    assert len(addresses) == 3
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [kommo_gateway_pb2_grpc.KommoGatewayStub(c) for c in channels]
    # Leads no one read before: the gateways' cache does not answer for Kommo.
    leads = [FIRST_LEAD + n for n in range(3 * READS_PER_REPLICA)]

    def read(n: int) -> gw.Lead:
        return stubs[n % 3].GetLead(gw.GetLeadRequest(lead_id=leads[n]), timeout=20)

    try:
        with httpx.Client(timeout=10) as http:
            account(addresses[0])  # a token to begin with
            before = sandbox_stats(http, replicas_stack)
            with ThreadPoolExecutor(len(leads)) as pool:
                answers = list(pool.map(read, range(len(leads))))
            after = sandbox_stats(http, replicas_stack)
    finally:
        for channel in channels:
            channel.close()
    assert [a.id for a in answers] == leads
    lead_gets = after["by_path"].get("/api/v4/leads", 0) - before["by_path"].get("/api/v4/leads", 0)
    # Batched per replica, each replica would need at least one.
    assert 1 <= lead_gets <= 2, f"{lead_gets} lead list calls for {len(leads)} reads"
    assert after["rate_limited_429"] == before["rate_limited_429"]
