"""Kommo OAuth tokens in Redis, refreshed once for every replica.

Kommo's refresh tokens are single use: two refreshes with the same one lose the
account. So a refresh is single-flight in the process (an asyncio lock) and across
replicas (a Redis lock with an owner and an expiry); the new pair is stored before it
is used, and only by the lock's owner for the version it started from (a fencing
check), so a replica that froze past its lock cannot overwrite a newer pair.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from services.common.errors import Unauthenticated, Unavailable, UpstreamError
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.store import REFRESH_LOCK, TOKEN_PROBLEM, TOKENS

log = logging.getLogger(__name__)

# Longer than a token call with its timeout; short enough that a dead holder is
# replaced quickly.
_LOCK_MS = 15_000
_WAIT_STEP_SECONDS = 0.05

_STORE_IF_OWNER = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['version'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[3])
return 1
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float
    version: int
    kind: str = "oauth"  # or "long_lived"


def jwt_expiry(token: str) -> float:
    """The `exp` claim of a JWT access token, 0 if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims.get("exp", 0))
    except (IndexError, ValueError):
        return 0.0


class RefreshRefused(Unauthenticated):
    pass


class TokenManager:
    def __init__(
        self, settings: GatewaySettings, redis: aioredis.Redis, http: httpx.AsyncClient
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._http = http
        self._local = asyncio.Lock()
        self._store_if_owner = redis.register_script(_STORE_IF_OWNER)
        self._release = redis.register_script(_RELEASE_IF_OWNER)
        self.refreshes = 0

    async def load(self) -> Tokens | None:
        raw = await self._redis.get(TOKENS)
        return Tokens(**json.loads(raw)) if raw else None

    async def problem(self) -> str:
        raw = await self._redis.get(TOKEN_PROBLEM)
        return raw.decode() if isinstance(raw, bytes) else (raw or "")

    async def bootstrap(self) -> None:
        """First credentials from the environment; once in Redis, Redis wins."""
        if await self.load() is not None:
            return
        s = self._settings
        if s.kommo_auth_code:
            await self.exchange_code(s.kommo_auth_code)
        elif s.kommo_refresh_token:
            seed = Tokens("", s.kommo_refresh_token, 0.0, 0)
            await self._redis.set(TOKENS, json.dumps(asdict(seed)), nx=True)
            await self.refresh(seed)
        elif s.kommo_long_lived_token:
            token = s.kommo_long_lived_token
            seed = Tokens(token, "", jwt_expiry(token), 1, kind="long_lived")
            await self._redis.set(TOKENS, json.dumps(asdict(seed)), nx=True)
        else:
            log.warning("no Kommo credentials: authorise the bridge at /oauth/authorize")

    async def exchange_code(self, code: str) -> Tokens:
        current = await self.load()
        answer = await self._token_call({"grant_type": "authorization_code", "code": code})
        version = (current.version if current else 0) + 1
        tokens = self._from_answer(answer, version)
        await self._redis.set(TOKENS, json.dumps(asdict(tokens)))
        await self._redis.delete(TOKEN_PROBLEM)
        log.info("Kommo authorised: token pair stored")
        return tokens

    async def current(self) -> Tokens:
        """A usable access token, refreshed ahead of its expiry when needed."""
        tokens = await self.load()
        if tokens is None or not (tokens.access_token or tokens.refresh_token):
            raise Unauthenticated("the bridge has no Kommo token: authorise it at /oauth/authorize")
        ahead = self._settings.kommo_refresh_ahead_seconds
        if tokens.refresh_token and tokens.expires_at - time.time() < ahead:
            tokens = await self.refresh(tokens)
        return tokens

    async def refresh(self, seen: Tokens) -> Tokens:
        """Refresh the pair `seen`, unless someone already did; returns the newest pair."""
        async with self._local:
            current = await self.load()
            if current is None:
                raise Unauthenticated("no Kommo token to refresh")
            if current.version != seen.version and current.access_token:
                return current
            if not current.refresh_token:
                raise Unauthenticated("the Kommo token cannot be refreshed (long-lived token)")
            owner = uuid.uuid4().hex
            while not await self._redis.set(REFRESH_LOCK, owner, nx=True, px=_LOCK_MS):
                await asyncio.sleep(_WAIT_STEP_SECONDS)
                newer = await self.load()
                if newer is not None and newer.version != current.version:
                    return newer
            try:
                newest = await self.load()
                if newest is not None and newest.version != current.version:
                    return newest
                try:
                    answer = await self._token_call(
                        {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
                    )
                except RefreshRefused as exc:
                    await self._redis.set(TOKEN_PROBLEM, str(exc))
                    raise
                tokens = self._from_answer(answer, current.version + 1)
                stored = await self._store_if_owner(
                    keys=[TOKENS, REFRESH_LOCK, TOKEN_PROBLEM],
                    args=[owner, current.version, json.dumps(asdict(tokens))],
                )
                if not stored:
                    # Our lock expired and someone else refreshed meanwhile: theirs stands.
                    log.error("refresh lock lost during a refresh; keeping the newer pair")
                    latest = await self.load()
                    if latest is None:
                        raise Unauthenticated("Kommo token vanished during a refresh")
                    return latest
                self.refreshes += 1
                log.info("Kommo access token refreshed", extra={"version": tokens.version})
                return tokens
            finally:
                await self._release(keys=[REFRESH_LOCK], args=[owner])

    async def _token_call(self, grant: dict[str, str]) -> dict[str, Any]:
        s = self._settings
        body = {
            "client_id": s.kommo_client_id,
            "client_secret": s.kommo_client_secret,
            "redirect_uri": s.kommo_redirect_uri,
            **grant,
        }
        try:
            response = await self._http.post(
                f"{s.base_url}/oauth2/access_token", json=body, timeout=s.kommo_timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"Kommo token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code in (400, 401):
            detail = _problem_detail(response)
            raise RefreshRefused(
                f"Kommo refused the {grant['grant_type'].replace('_', ' ')} ({detail}); "
                "authorise the bridge again at /oauth/authorize"
            )
        if response.status_code == 403 and "html" in response.headers.get("content-type", ""):
            raise Unavailable("Kommo has blocked this account or IP (403): contact Kommo support")
        if not response.is_success:
            raise Unavailable(f"Kommo token endpoint answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not (
            isinstance(answer, dict) and answer.get("access_token") and answer.get("refresh_token")
        ):
            raise UpstreamError("Kommo token endpoint answered without a token pair")
        return answer

    @staticmethod
    def _from_answer(answer: dict[str, Any], version: int) -> Tokens:
        expires_in = float(answer.get("expires_in") or 0)
        expires_at = jwt_expiry(answer["access_token"]) or time.time() + expires_in
        return Tokens(answer["access_token"], answer["refresh_token"], expires_at, version)


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("hint") or body.get("detail") or body.get("title") or body)[:200]
    return f"HTTP {response.status_code}"
