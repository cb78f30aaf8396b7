"""The one Redis connection pool of a process."""

from __future__ import annotations

import redis.asyncio as aioredis

# Bounded so a Redis that stops answering fails calls fast instead of piling them up.
_SOCKET_TIMEOUT_SECONDS = 5.0
_CONNECT_TIMEOUT_SECONDS = 2.0
_MAX_CONNECTIONS = 64
# How long a caller waits for a free connection when all are busy.
_POOL_WAIT_SECONDS = 5.0


def create_redis(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_CONNECTIONS,
        timeout=_POOL_WAIT_SECONDS,
        socket_timeout=_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)
