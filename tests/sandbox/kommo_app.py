"""A Kommo sandbox app driven in-process, shared by the sandbox's tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sandbox.kommo import SandboxConfig
from sandbox.kommo.runtime import Sandbox

BRIDGE_URL = "http://bridge.test/webhooks/kommo?secret=s3cret"
BASE_CONFIG = SandboxConfig(
    bridge_webhook_url=BRIDGE_URL,
    echo_delay=0.03,
    rate_limit_rps=0,
)
LEAD = 9100001
CONTACT = 4400001
REPLY_FIELD = BASE_CONFIG.reply_field_id
# Far above echo_delay: only a sandbox that never delivers gets near it.
SETTLE_SECONDS = 2.0


@dataclass
class Kommo:
    """A sandbox app driven in-process, with every webhook it POSTs caught."""

    client: httpx.AsyncClient
    sandbox: Sandbox
    config: SandboxConfig
    webhooks: list[httpx.Request] = field(default_factory=list)
    bridge_status: int = 200

    async def token_pair(self) -> dict[str, Any]:
        answer = await self.client.post(
            "/oauth2/access_token", json=self.grant(refresh_token=self.config.initial_refresh_token)
        )
        assert answer.status_code == 200, answer.text
        pair: dict[str, Any] = answer.json()
        return pair

    async def auth(self) -> dict[str, str]:
        pair = await self.token_pair()
        return {"Authorization": f"Bearer {pair['access_token']}"}

    def grant(self, *, code: str | None = None, refresh_token: str | None = None) -> dict[str, str]:
        body = {
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "redirect_uri": self.config.redirect_uri,
        }
        if code is not None:
            return {**body, "grant_type": "authorization_code", "code": code}
        assert refresh_token is not None
        return {**body, "grant_type": "refresh_token", "refresh_token": refresh_token}

    async def settled(self) -> None:
        """Wait until every Salesbot run and Chats API echo scheduled so far has happened."""
        async with asyncio.timeout(SETTLE_SECONDS):
            await self.sandbox.activity.drain()

    async def chat(self, lead_id: int) -> list[dict[str, Any]]:
        answer = await self.client.get(f"/_sandbox/chats/{lead_id}")
        messages: list[dict[str, Any]] = answer.json()
        return messages

    async def set_reply(self, headers: dict[str, str], text: str, lead_id: int = LEAD) -> None:
        answer = await self.client.patch(
            f"/api/v4/leads/{lead_id}",
            headers=headers,
            json={"custom_fields_values": [{"field_id": REPLY_FIELD, "values": [{"value": text}]}]},
        )
        assert answer.status_code == 200, answer.text


OpenKommo = Callable[..., Awaitable[Kommo]]
