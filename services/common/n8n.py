"""Delivering envelopes to n8n: signed when configured, classified for retry."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

# Answers that mean "try again later" (docs/n8n-contract.md); any other 4xx is final.
_RETRY_STATUSES = frozenset({408, 425, 429})
_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    retry: bool
    detail: str


class N8nClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        auth_header: str,
        signing_secret: str,
        timeout_seconds: float,
    ) -> None:
        self._client = client
        self._headers = {"content-type": "application/json"}
        if auth_header:
            name, _, value = auth_header.partition(":")
            self._headers[name.strip()] = value.strip()
        self._signer = Webhook(signing_secret) if signing_secret else None
        self._timeout = timeout_seconds

    async def post(self, url: str, event_id: str, payload: str, request_id: str = "") -> Attempt:
        headers = dict(self._headers)
        if request_id:
            # n8n may send it back on /send-response: the reply then logs under the same id.
            headers["x-request-id"] = request_id
        if self._signer is not None:
            now = datetime.now(UTC)
            headers["webhook-id"] = event_id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self._signer.sign(event_id, now, payload)
        try:
            response = await self._client.post(
                url, content=payload.encode(), headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            return Attempt(False, True, f"n8n unreachable: {type(exc).__name__}")
        if response.is_success:
            return Attempt(True, False, str(response.status_code))
        status = response.status_code
        detail = f"n8n answered {status}: {response.text[:200]}"
        return Attempt(False, status >= 500 or status in _RETRY_STATUSES, detail)


def next_delay(schedule: list[float], attempts: int) -> float | None:
    """Seconds until the next try after `attempts` failures; None = give up."""
    if attempts >= len(schedule):
        return None
    base = schedule[attempts]
    return max(0.0, base * (1 + random.uniform(-_JITTER, _JITTER)))  # noqa: S311


def new_event_id() -> str:
    return uuid.uuid4().hex
