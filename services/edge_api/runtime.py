"""What the edge holds while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from services.common.redis import create_redis
from services.edge_api import webhook
from services.edge_api.batcher import WebhookBatcher
from services.edge_api.cache import SharedResult
from services.edge_api.clients import Clients
from services.edge_api.settings import EdgeSettings

if TYPE_CHECKING:
    from services.edge_api.routes.status import HealthReport


class EdgeRuntime:
    """Built inside the server's event loop (gRPC channels and Redis connections belong
    to the loop that created them), at the application's start-up."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self._clients: Clients | None = None
        self._webhook: webhook.KommoWebhook | None = None
        self._batcher: WebhookBatcher | None = None
        self.redis: aioredis.Redis | None = None
        # What /health answers, shared for EDGE_HEALTH_CACHE_SECONDS (routes/status.py).
        self.health: SharedResult[HealthReport] | None = None

    @property
    def clients(self) -> Clients:
        assert self._clients is not None, "the edge is not started"
        return self._clients

    @property
    def webhook(self) -> webhook.KommoWebhook:
        assert self._webhook is not None, "the edge is not started"
        return self._webhook

    def start(self) -> None:
        s = self.settings
        self._clients = Clients.connect(s)
        self._batcher = WebhookBatcher(
            self._clients.conversation,
            s.webhook_streams,
            s.webhook_max_batch,
            s.webhook_ack_timeout_seconds,
        )
        self._webhook = webhook.KommoWebhook(
            self._batcher, s.kommo_webhook_secret, s.edge_max_body_bytes
        )
        self.redis = create_redis(s.redis_url) if s.redis_url else None

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        if self._clients is not None:
            await self._clients.close()
        if self.redis is not None:
            await self.redis.aclose()
