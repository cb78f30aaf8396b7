"""Service processes: several replicas on their own ports, clean exit on SIGTERM."""

from __future__ import annotations

import signal
import time

import httpx

from devstack.processes import grpc_serving
from devstack.stack import Stack


def test_sigterm_stops_a_replica_cleanly_and_quickly(stack: Stack, http: httpx.Client) -> None:
    extra = stack.start_service("vendedor")
    stack.launcher.wait_ready(extra)
    assert grpc_serving(extra.address)
    started = time.monotonic()
    extra.signal(signal.SIGTERM)
    assert extra.popen.wait(10) == 0
    assert time.monotonic() - started < 8
    assert "vendedor shutting down" in extra.log()
    stack.services["vendedor"].remove(extra)
    assert (
        http.get(f"{stack.edge_url}/health", headers={"X-API-Key": stack.api_key}).json()[
            "services"
        ]["vendedor"]
        == "SERVING"
    )


def test_replicas_of_one_service_run_side_by_side(stack: Stack) -> None:
    for name in ("conversation", "kommo_gateway"):
        replicas = stack.services[name]
        assert len(replicas) == 2
        assert len({p.port for p in replicas}) == 2
        assert all(grpc_serving(p.address) for p in replicas)
