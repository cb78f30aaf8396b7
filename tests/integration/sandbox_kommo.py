"""The Kommo sandbox in-process (ASGI, no port) and gateway settings that reach it: for
tests that drive the gateway's Kommo client against a Kommo that behaves like the real one."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from sandbox.kommo import SandboxConfig, create_app
from services.kommo_gateway.settings import GatewaySettings

BASE = "http://previdas.sandbox.test"
CONFIG = SandboxConfig(bridge_webhook_url="", echo_delay=0.03, rate_limit_rps=0)


def sandbox_app() -> FastAPI:
    """A sandbox whose webhooks to the bridge are all accepted (and go nowhere)."""
    return create_app(CONFIG, webhook_transport=httpx.MockTransport(lambda r: httpx.Response(200)))


def gateway_settings(redis_url: str, rate_limit_rps: int) -> GatewaySettings:
    return GatewaySettings(
        redis_url=redis_url,
        kommo_base_url=BASE,
        kommo_sandbox=True,
        kommo_client_id=CONFIG.client_id,
        kommo_client_secret=CONFIG.client_secret,
        kommo_redirect_uri=CONFIG.redirect_uri,
        kommo_refresh_token=CONFIG.initial_refresh_token,
        kommo_salesbot_id=CONFIG.salesbot_id,
        kommo_reply_field_id=CONFIG.reply_field_id,
        kommo_rate_limit_rps=rate_limit_rps,
    )


class Counting(httpx.AsyncBaseTransport):
    """Passes every request on to the sandbox, keeping its path."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self._inner.handle_async_request(request)


def chats_api_settings(redis_url: str) -> GatewaySettings:
    """A gateway sending texts through the sandbox's Chats API (no retries)."""
    return gateway_settings(redis_url, 50).model_copy(
        update={
            "kommo_channel_id": "sandbox-channel",
            "kommo_channel_secret": CONFIG.channel_secret,
            "kommo_scope_id": CONFIG.scope_id,
            "kommo_amojo_base_url": BASE,
            "kommo_max_retries": 0,
        }
    )
