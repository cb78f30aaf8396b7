"""Driving gateway replicas directly over gRPC, as the other services do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import pytest

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from devstack.stack import Stack
from tests.e2e.conftest import isolated_stack


@contextmanager
def gateway_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str],
    sandbox_env: dict[str, str],
) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory, name, env=env, scale={"kommo_gateway": 3}, sandbox_env=sandbox_env
    ) as running:
        yield running


def account(address: str, timeout: float = 20.0) -> gw.Account:
    with grpc.insecure_channel(address) as channel:
        stub = kommo_gateway_pb2_grpc.KommoGatewayStub(channel)
        return stub.GetAccount(gw.GetAccountRequest(), timeout=timeout)


def status(address: str) -> gw.GatewayStatus:
    with grpc.insecure_channel(address) as channel:
        stub = kommo_gateway_pb2_grpc.KommoGatewayStub(channel)
        return stub.GetStatus(gw.GetStatusRequest(), timeout=5)


def sandbox_stats(http: httpx.Client, stack: Stack) -> dict[str, Any]:
    return dict(http.get(f"{stack.sandbox_url}/_sandbox/stats").json())
