"""Driving gateway replicas directly over gRPC, as the other services do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from devstack.processes import free_port
from devstack.redis_server import RedisServer
from devstack.stack import Stack, StackConfig, start_stack
from tests.e2e.conftest import E2E_ENV


@contextmanager
def gateway_stack(
    data_dir: Path, log_dir: Path, env: dict[str, str], sandbox_env: dict[str, str]
) -> Iterator[Stack]:
    redis = RedisServer(free_port(), data_dir).start()
    config = StackConfig(
        log_dir=log_dir,
        env={**E2E_ENV, "REDIS_URL": redis.url, **env},
        scale={"kommo_gateway": 3},
        sandbox_env=sandbox_env,
    )
    try:
        running = start_stack(config)
    except BaseException:
        redis.stop()
        raise
    try:
        yield running
    finally:
        running.stop()
        redis.stop()


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
