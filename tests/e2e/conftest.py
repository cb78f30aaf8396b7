"""The whole bridge as real processes — five services (gateway and conversation with two
replicas each), the Kommo sandbox and the n8n stand-in — on the test Redis."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from devstack.processes import free_port
from devstack.redis_server import RedisServer
from devstack.stack import Stack, StackConfig, start_stack

T = TypeVar("T")

SIGNING_SECRET = "whsec_" + base64.b64encode(b"e2e-signing-key-of-32-bytes-long").decode()

E2E_ENV = {
    "MESSAGE_DEBOUNCE_SECONDS": "0",
    "N8N_RETRY_SCHEDULE": "0,0.5,1,1,1,2,2,2",
    "KOMMO_REPLY_SPACING_SECONDS": "0.3",
    "KOMMO_DELIVERY_GRACE_SECONDS": "0.5",
    "LOG_LEVEL": "INFO",
    "N8N_SIGNING_SECRET": SIGNING_SECRET,
}


@contextmanager
def isolated_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str] | None = None,
    scale: dict[str, int] | None = None,
    sandbox_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A whole stack with a Redis of its own, for tests that need their own settings."""
    redis_server = RedisServer(free_port(), tmp_path_factory.mktemp(f"{name}-redis")).start()
    try:
        running = start_stack(
            StackConfig(
                log_dir=tmp_path_factory.mktemp(f"{name}-logs"),
                env={**E2E_ENV, "REDIS_URL": redis_server.url, **(env or {})},
                scale=scale or {},
                sandbox_env=sandbox_env or {},
            )
        )
        try:
            yield running
            assert_no_free_text_into_closed_windows(running)
        finally:
            running.stop()
    finally:
        redis_server.stop()


@pytest.fixture(scope="package")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushdb()
    log_dir: Path = tmp_path_factory.mktemp("stack-logs")
    running = start_stack(
        StackConfig(
            log_dir=log_dir,
            env={**E2E_ENV, "REDIS_URL": redis_url},
            scale={"conversation": 2, "kommo_gateway": 2},
            sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"},
        )
    )
    try:
        yield running
        assert_no_free_text_into_closed_windows(running)
    finally:
        running.stop()


def assert_no_free_text_into_closed_windows(stack: Stack) -> None:
    """WhatsApp refuses free text outside the customer's 24-hour window: across every test
    of a stack, the sandbox (playing WhatsApp) must have seen the bridge send none."""
    if stack.sandbox is None:
        return
    sends = httpx.get(f"{stack.sandbox_url}/_sandbox/closed-window-sends", timeout=10).json()
    assert sends == [], f"free text sent into a closed WhatsApp window: {sends}"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as client:
        yield client


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    """The edge's API with the key, of the `stack` the test uses (a module may override
    `stack` with one of its own settings)."""
    with httpx.Client(
        base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30.0
    ) as client:
        yield client


def wait_for(check: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def customer_writes(http: httpx.Client, stack: Stack, lead_id: int, text: str) -> dict[str, Any]:
    answer = http.post(
        f"{stack.sandbox_url}/_sandbox/customer-message", json={"lead_id": lead_id, "text": text}
    )
    answer.raise_for_status()
    return dict(answer.json())


def chat(http: httpx.Client, stack: Stack, lead_id: int) -> list[dict[str, Any]]:
    return list(http.get(f"{stack.sandbox_url}/_sandbox/chats/{lead_id}").json())


def envelopes(http: httpx.Client, stack: Stack) -> list[dict[str, Any]]:
    return [
        r["body"] for r in http.get(f"{stack.standin_url}/_standin/received").json()["received"]
    ]


def lead_snapshot(http: httpx.Client, stack: Stack, lead_id: int) -> dict[str, Any]:
    """The lead with its notes, tasks and chat, as the sandbox holds them."""
    return dict(http.get(f"{stack.sandbox_url}/_sandbox/leads/{lead_id}").json())
