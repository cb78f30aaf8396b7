"""Kommo's REST API, as it really behaves (developers.kommo.com): HAL JSON, 204 for
"nothing", problem+json errors, 401 on an expired token, 429 without Retry-After past
the rate limit, 403 HTML when the account is blocked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from services.common.errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from services.common.metrics import KOMMO_REQUESTS
from services.kommo_gateway.breaker import CircuitBreaker
from services.kommo_gateway.ratelimit import RateLimiter
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.tokens import TokenManager

log = logging.getLogger(__name__)

_BACKOFF_BASE_SECONDS = 0.5
_BACKOFF_MAX_SECONDS = 8.0
PAGE_LIMIT = 250


class KommoClient:
    def __init__(
        self,
        settings: GatewaySettings,
        http: httpx.AsyncClient,
        tokens: TokenManager,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._http = http
        self.tokens = tokens
        self._limiter = limiter
        self.breaker = CircuitBreaker(
            settings.kommo_breaker_failures, settings.kommo_breaker_cooldown_seconds
        )
        self.rate_limited = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One Kommo call with the shared rate limit, a refresh on 401 and retries.

        Calls that are not idempotent (running a Salesbot) are never retried after
        they may have reached Kommo: a 5xx or a timeout raises Unavailable and the
        caller decides.
        """
        s = self._settings
        refreshed = False
        attempt = 0
        while True:
            blocked = await self.tokens.blocked()
            if blocked:
                raise Unavailable(blocked)
            tokens = await self.tokens.current()
            if not self.breaker.allow():
                raise Unavailable(
                    f"Kommo is failing: calls paused for {self.breaker.retry_in():.0f} s "
                    "(circuit open)"
                )
            try:
                response = await self._limiter.request(
                    self._http,
                    method,
                    f"{s.base_url}{path}",
                    json=json,
                    params=params,
                    headers={"Authorization": f"Bearer {tokens.access_token}"},
                    timeout=s.kommo_timeout_seconds,
                )
            except httpx.HTTPError as exc:
                self.breaker.failure()
                if idempotent and attempt < s.kommo_max_retries and self.breaker.state == "closed":
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise Unavailable(f"Kommo unreachable: {type(exc).__name__}") from exc
            status = response.status_code
            KOMMO_REQUESTS.labels(str(status)).inc()
            if status >= 500:
                self.breaker.failure()
            else:
                self.breaker.success()
            if status == 403 and "html" in response.headers.get("content-type", ""):
                await self.tokens.mark_blocked()
                raise Unavailable(await self.tokens.blocked())
            if status == 401 and not refreshed and tokens.refresh_token:
                refreshed = True
                await self.tokens.refresh(tokens)
                continue
            if status == 429:
                self.rate_limited += 1
                if attempt < s.kommo_max_retries:
                    attempt += 1
                    await asyncio.sleep(_retry_after(response) or _backoff(attempt))
                    continue
                raise RateLimited("Kommo rate limit: too many requests")
            if (
                status >= 500
                and idempotent
                and attempt < s.kommo_max_retries
                and self.breaker.state == "closed"
            ):
                attempt += 1
                await asyncio.sleep(_backoff(attempt))
                continue
            return _checked(response, path)

    async def get_json(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        """The decoded body, or None for Kommo's 204 (an empty list or an unknown id)."""
        response = await self.request("GET", path, params=params)
        return _body(response)

    async def lead(self, lead_id: int) -> dict[str, Any]:
        body = await self.get_json(f"/api/v4/leads/{lead_id}", {"with": "contacts"})
        if not body:
            raise NotFound(f"lead {lead_id} not found in Kommo")
        return dict(body)

    async def contact(self, contact_id: int) -> dict[str, Any]:
        body = await self.get_json(f"/api/v4/contacts/{contact_id}")
        if not body:
            raise NotFound(f"contact {contact_id} not found in Kommo")
        return dict(body)

    async def users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self.get_json("/api/v4/users", {"page": page, "limit": PAGE_LIMIT})
            batch = (body or {}).get("_embedded", {}).get("users", [])
            users.extend(batch)
            if not body or not body.get("_links", {}).get("next") or not batch:
                return users
            page += 1

    async def account(self) -> dict[str, Any]:
        body = await self.get_json("/api/v4/account")
        if not body:
            raise UpstreamError("Kommo answered the account call without a body")
        return dict(body)

    async def update_fields(
        self, entity: str, entity_id: int, values: list[tuple[int, str]]
    ) -> None:
        """Write custom field values of a lead or contact (`entity`: leads or contacts)."""
        await self.request(
            "PATCH",
            f"/api/v4/{entity}/{entity_id}",
            json={
                "custom_fields_values": [
                    {"field_id": field_id, "values": [{"value": value}]}
                    for field_id, value in values
                ]
            },
        )

    async def add_task(
        self, lead_id: int, text: str, responsible_user_id: int, complete_till: int
    ) -> int:
        task: dict[str, Any] = {
            "text": text,
            "complete_till": complete_till,
            "entity_id": lead_id,
            "entity_type": "leads",
            "task_type_id": 1,
        }
        if responsible_user_id:
            task["responsible_user_id"] = responsible_user_id
        response = await self.request("POST", "/api/v4/tasks", json=[task], idempotent=False)
        tasks = (_body(response) or {}).get("_embedded", {}).get("tasks", [])
        return int(tasks[0]["id"]) if tasks else 0

    async def register_webhook(self, destination: str, events: list[str]) -> None:
        await self.request(
            "POST", "/api/v4/webhooks", json={"destination": destination, "settings": events}
        )

    async def webhooks(self) -> list[dict[str, Any]]:
        body = await self.get_json("/api/v4/webhooks")
        return list((body or {}).get("_embedded", {}).get("webhooks", []))

    async def add_note(self, lead_id: int, text: str) -> int:
        try:
            response = await self.request(
                "POST",
                f"/api/v4/leads/{lead_id}/notes",
                json=[{"note_type": "common", "params": {"text": text}}],
                idempotent=False,
            )
        except NotFound as exc:
            raise NotFound(f"lead {lead_id} not found in Kommo: no note written") from exc
        body = _body(response) or {}
        notes = body.get("_embedded", {}).get("notes", [])
        return int(notes[0]["id"]) if notes else 0

    async def set_lead_field(self, lead_id: int, field_id: int, value: str) -> None:
        await self.update_fields("leads", lead_id, [(field_id, value)])

    async def run_salesbot(self, bot_id: int, lead_id: int) -> None:
        await self.request(
            "POST",
            "/api/v2/salesbot/run",
            json=[{"bot_id": bot_id, "entity_id": lead_id, "entity_type": 2}],
            idempotent=False,
        )

    async def outgoing_messages(self, lead_id: int) -> list[dict[str, Any]]:
        """The lead's outgoing chat message events (evidence that a reply went out)."""
        body = await self.get_json(
            "/api/v4/events",
            {
                "filter[entity]": "lead",
                "filter[entity_id]": lead_id,
                "filter[type]": "outgoing_chat_message",
            },
        )
        return list((body or {}).get("_embedded", {}).get("events", []))


def _backoff(attempt: int) -> float:
    base = min(_BACKOFF_MAX_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return float(base * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not crypto


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), _BACKOFF_MAX_SECONDS * 4)
    except ValueError:
        return 0.0


def _body(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        if 200 <= response.status_code < 300:
            # Some Kommo endpoints (bots/run) answer text: "Accepted".
            return None
        raise UpstreamError(f"Kommo answered {response.status_code} without JSON") from exc


def _checked(response: httpx.Response, path: str) -> httpx.Response:
    status = response.status_code
    if status < 400:
        return response
    detail = _detail(response)
    if status == 404 or (status == 400 and _only_not_found(response)):
        raise NotFound(f"Kommo: not found ({path})")
    if status in (400, 422):
        raise InvalidInput(f"Kommo refused the request to {path}: {detail}")
    if status == 401:
        raise Unauthenticated(f"Kommo refused the token: {detail}; re-authorise the bridge")
    if status in (402, 403):
        raise UpstreamError(f"Kommo forbids {path} ({status}): {detail}")
    if status >= 500:
        raise Unavailable(f"Kommo answered {status} for {path}")
    raise UpstreamError(f"Kommo answered {status} for {path}: {detail}")


def _only_not_found(response: httpx.Response) -> bool:
    """A 400 whose every validation error is NotFound: Kommo's answer to a write on an
    entity that does not exist (a note on an unknown lead), which means 404."""
    try:
        body = response.json()
    except ValueError:
        return False
    errors = body.get("validation-errors") if isinstance(body, dict) else None
    codes = [
        e.get("code")
        for item in errors or []
        if isinstance(item, dict)
        for e in item.get("errors") or []
        if isinstance(e, dict)
    ]
    return bool(codes) and all(code == "NotFound" for code in codes)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        errors = body.get("validation-errors")
        return str(body.get("detail") or body.get("title") or "") + (f" {errors}" if errors else "")
    return str(body)[:200]
