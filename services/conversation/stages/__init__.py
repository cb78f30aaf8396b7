"""The conversation pipeline, one module per stage (see services/conversation/engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from redis.exceptions import RedisError

from services.common.errors import Unavailable, is_transient_code

if TYPE_CHECKING:
    from services.conversation.engine import Engine


def is_transient(exc: BaseException) -> bool:
    """A failure that trying again later can get past (a dependency unavailable)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return is_transient_code(exc.code())
    return isinstance(exc, RedisError | Unavailable | OSError)


class Stage:
    """A stage of the pipeline: the engine's parts it works with, by their names."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.store = engine.store
        self.gateway = engine.gateway
        self.vendedores = engine.vendedores
        self.n8n = engine.n8n
        self.bots = engine.bots
        self.bot = engine.bot
        self.proactive = engine.proactive
        self.failures = engine.failures
