"""The one Redis every test uses: REDIS_URL when set, else a testcontainers Redis when
a Docker engine answers, else a `redis-server` process of our own on a free port (the
binary `make run` uses). Tests flush it: never point REDIS_URL at data you keep."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devstack.processes import free_port
from devstack.redis_server import RedisServer

log = logging.getLogger(__name__)


def _docker_redis() -> Iterator[str] | None:
    try:
        import docker
        from testcontainers.redis import RedisContainer

        docker.from_env(timeout=2).ping()
    except Exception:  # no engine here is the normal case, not an error
        return None

    def run() -> Iterator[str]:
        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"

    return run()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    container = _docker_redis()
    if container is not None:
        yield from container
        return
    server = RedisServer(free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to restart, stop or freeze (the shared one is
    for everyone)."""
    server = RedisServer(free_port(), tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.stop()
