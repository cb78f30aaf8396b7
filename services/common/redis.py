"""The one Redis connection pool of a process."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_lane import BridgeRedis

# Bounded so a Redis that stops answering fails calls fast instead of piling them up.
_SOCKET_TIMEOUT_SECONDS = 5.0
_CONNECT_TIMEOUT_SECONDS = 2.0
_MAX_CONNECTIONS = 64
# How long a caller waits for a free connection when all are busy.
_POOL_WAIT_SECONDS = 5.0
# After a Redis restart every pooled connection is dead; a few quick retries reconnect
# instead of failing one request per stale connection. Our scripts are safe to repeat
# (dedupe keys, applied-sets, leases).
_RETRIES = 3


def create_redis(url: str) -> BridgeRedis:
    """The process's client: commands through a bounded pool, Lua scripts pipelined over
    one connection of their own (services/common/redis_lane.py)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_CONNECTIONS,
        timeout=_POOL_WAIT_SECONDS,
        socket_timeout=_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return BridgeRedis(connection_pool=pool)
