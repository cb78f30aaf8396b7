"""Redis down: the webhook is refused with 503 (Kommo retries), never acknowledged
without being stored; when Redis is back, the flow resumes by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.processes import free_port
from devstack.redis_server import RedisServer
from devstack.stack import Stack, StackConfig, start_stack
from tests.e2e.conftest import E2E_ENV, chat, customer_writes, wait_for


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-aof")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_stack(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    log_dir: Path = tmp_path_factory.mktemp("outage-logs")
    running = start_stack(StackConfig(log_dir=log_dir, env={**E2E_ENV, "REDIS_URL": own_redis.url}))
    try:
        yield running
    finally:
        running.stop()


def test_webhook_is_refused_while_redis_is_down_and_flows_after(
    small_stack: Stack, own_redis: RedisServer
) -> None:
    with httpx.Client(timeout=10.0) as http:
        own_redis.stop()
        try:
            sent = customer_writes(http, small_stack, 9100011, "enquanto o redis está fora")
            assert sent["bridge_status"] == 503
            again = http.post(small_stack.webhook_url, content=sent["body"])
            assert again.status_code == 503
            assert "retry" in again.json()["error"]
            assert http.get(f"{small_stack.edge_url}/health").status_code == 503
        finally:
            own_redis.start()
        # Kommo's retry of the same delivery is now stored and answered.
        retried = http.post(small_stack.webhook_url, content=sent["body"])
        assert retried.status_code == 200
        wait_for(
            lambda: any(
                m["direction"] == "outgoing" and "enquanto o redis" in m["text"]
                for m in chat(http, small_stack, 9100011)
            ),
            timeout=20,
            what="reply after Redis came back",
        )
