"""Kommo OAuth tokens in Redis, refreshed once for every replica.

Kommo's refresh tokens are single use: two refreshes with the same one lose the
account (docs/kommo-api.md). So:

- a refresh is single-flight in the process (an asyncio lock) and across replicas (a
  Redis lock with an owner and an expiry, so a replica that dies holding it blocks the
  others only until it expires);
- right before calling Kommo the holder checks it still holds the lock and that nobody
  stored a newer pair — a holder frozen past its lock wakes up and stands down instead
  of spending a refresh token that is no longer current;
- the new pair is stored before it is used, with a compare-and-set on the version it
  was refreshed from: Kommo accepts each refresh token once, so at most one refresh per
  version can succeed, and that one must be kept whatever happened to the lock;
- a refused refresh token is the end of the account only when no newer pair shows up
  within the lock's lifetime (a frozen holder may still be about to store it); then
  every call fails fast with a message saying to re-authorise — no retry storm.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import (
    BridgeError,
    InvalidInput,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from services.common.grpc_server import BackgroundTask
from services.common.metrics import TOKEN_REFRESHES
from services.kommo_gateway.ratelimit import Departure, RateLimiter
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.store import (
    BLOCKED,
    OAUTH_STATE_TTL_SECONDS,
    REFRESH_LOCK,
    REFRESH_REFUSED_SINCE,
    TOKEN_PROBLEM,
    TOKENS,
    oauth_state_key,
)

log = logging.getLogger(__name__)

# What every call to Kommo reads just before it goes: the account blocked, a token
# problem, the token pair (the rate limiter's confirmation reads them with it).
TOKEN_STATE = (BLOCKED, TOKEN_PROBLEM, TOKENS)

_WAIT_STEP_SECONDS = 0.05
_LONG_LIVED_WARNING_SECONDS = 14 * 24 * 3600

_STORE_IF_VERSION = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
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
    refreshed_at: float = 0.0


def jwt_expiry(token: str) -> float:
    """The `exp` claim of a JWT access token, 0 if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims.get("exp", 0))
    except (IndexError, ValueError, AttributeError):
        return 0.0


class RefreshRefused(Unauthenticated):
    pass


class TokenManager:
    def __init__(
        self,
        settings: GatewaySettings,
        redis: aioredis.Redis,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._http = http
        self._limiter = limiter
        self._local = asyncio.Lock()
        self._store_if_version = redis.register_script(_STORE_IF_VERSION)
        self._release = redis.register_script(_RELEASE_IF_OWNER)
        self.refreshes = 0

    async def load(self) -> Tokens | None:
        raw = await self._redis.get(TOKENS)
        return Tokens(**json.loads(raw)) if raw else None

    async def problem(self) -> str:
        return _text(await self._redis.get(TOKEN_PROBLEM))

    async def blocked(self) -> str:
        return _text(await self._redis.get(BLOCKED))

    async def mark_blocked(self) -> None:
        log.error("KOMMO HAS BLOCKED THIS ACCOUNT OR IP (403): calls stop; contact Kommo support")
        await self._redis.set(
            BLOCKED,
            f"Kommo answered 403 'blocked' at {time.strftime('%Y-%m-%d %H:%M:%S')} UTC; "
            "repeated rate-limit violations get an account blocked: contact Kommo support",
            ex=int(self._settings.kommo_blocked_backoff_seconds),
        )

    async def bootstrap(self) -> None:
        """First credentials from the environment; once in Redis, Redis wins."""
        current = await self.load()
        if current is not None:
            self.warn_long_lived(current)
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
            self.warn_long_lived(seed)
        else:
            log.warning("no Kommo credentials: authorise the bridge at /oauth/authorize")

    @staticmethod
    def warn_long_lived(tokens: Tokens) -> None:
        if tokens.kind != "long_lived" or not tokens.expires_at:
            return
        left = tokens.expires_at - time.time()
        if left < _LONG_LIVED_WARNING_SECONDS:
            log.warning(
                "the Kommo long-lived token expires in %.1f days: issue a new one",
                max(left, 0) / 86400,
            )

    # --- authorisation (consent page) --------------------------------------------------

    async def authorize_url(self) -> str:
        s = self._settings
        if not s.kommo_client_id:
            raise InvalidInput("KOMMO_CLIENT_ID is not configured: create the integration first")
        state = secrets.token_urlsafe(24)
        await self._redis.set(oauth_state_key(state), "1", ex=OAUTH_STATE_TTL_SECONDS)
        query = urlencode({"client_id": s.kommo_client_id, "state": state, "mode": "post_message"})
        return f"{s.consent_url}?{query}"

    async def complete_authorization(self, code: str, state: str) -> Tokens:
        if not code or not state:
            raise InvalidInput("code and state are required")
        # GETDEL: a state works once, so a replayed callback is refused.
        if not await self._redis.getdel(oauth_state_key(state)):
            raise InvalidInput(
                "unknown, expired or already used state: start again at /oauth/authorize"
            )
        return await self.exchange_code(code)

    async def exchange_code(self, code: str) -> Tokens:
        current = await self.load()
        answer = await self._token_call({"grant_type": "authorization_code", "code": code})
        version = (current.version if current else 0) + 1
        tokens = self._from_answer(answer, version)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(TOKENS, json.dumps(asdict(tokens)))
            pipe.delete(TOKEN_PROBLEM, REFRESH_REFUSED_SINCE)
            await pipe.execute()
        log.info("Kommo authorised: token pair stored")
        return tokens

    # --- using and refreshing -------------------------------------------------------------

    async def for_a_call(self, read: list[Any] | None = None) -> Tokens:
        """What a call to Kommo needs (TOKEN_STATE's values: `read` with its departure's
        confirmation, else read now in one command; issue 22: was three): a usable access
        token, unless the account is blocked (Unavailable) or the tokens have a problem
        (Unauthenticated)."""
        if read is None or len(read) != len(TOKEN_STATE):
            read = list(await self._redis.mget(*TOKEN_STATE))
        blocked, problem, raw = read
        if blocked:
            raise Unavailable(_text(blocked))
        return await self.current(problem=_text(problem), raw=raw)

    async def current(
        self, *, problem: str | None = None, raw: bytes | str | None = None
    ) -> Tokens:
        """A usable access token, refreshed ahead of its expiry when needed (`problem`
        and `raw`, the stored pair, when the caller read them already)."""
        if problem is None:
            problem = await self.problem()
            raw = await self._redis.get(TOKENS)
        if problem:
            raise Unauthenticated(problem)
        tokens = Tokens(**json.loads(raw)) if raw else None
        if tokens is None or not (tokens.access_token or tokens.refresh_token):
            raise Unauthenticated("the bridge has no Kommo token: authorise it at /oauth/authorize")
        if tokens.refresh_token and tokens.expires_at - time.time() < (
            self._settings.kommo_refresh_ahead_seconds
        ):
            tokens = await self.refresh(tokens)
        elif tokens.kind == "long_lived" and tokens.expires_at and tokens.expires_at < time.time():
            raise Unauthenticated("the Kommo long-lived token has expired: issue a new one")
        return tokens

    async def refresh(self, seen: Tokens) -> Tokens:
        """Refresh the pair `seen` unless someone already did; returns the newest pair."""
        async with self._local:
            current = await self.load()
            if current is None:
                raise Unauthenticated("no Kommo token to refresh")
            if current.version != seen.version and current.access_token:
                return current
            if not current.refresh_token:
                raise Unauthenticated("the Kommo token cannot be refreshed (long-lived token)")
            owner = uuid.uuid4().hex
            lock_ms = int(self._settings.kommo_refresh_lock_seconds * 1000)
            deadline = time.monotonic() + 2 * self._settings.kommo_refresh_lock_seconds
            while not await self._redis.set(REFRESH_LOCK, owner, nx=True, px=lock_ms):
                newer = await self.load()
                if newer is not None and newer.version != current.version:
                    return newer
                if time.monotonic() > deadline:
                    raise Unavailable("a Kommo token refresh is taking too long; retry shortly")
                await asyncio.sleep(_WAIT_STEP_SECONDS)
            try:
                return await self._refresh_holding_lock(current, owner)
            finally:
                await self._release(keys=[REFRESH_LOCK], args=[owner])

    async def _refresh_holding_lock(self, current: Tokens, owner: str) -> Tokens:
        # Our turn under the rate limit first, then the checks, then the call at once:
        # a holder frozen while it waited finds out below that it lost the lock.
        departure = await self._limiter.acquire()
        try:
            return await self._refresh_checked(current, owner, departure)
        finally:
            await departure.settle()

    async def _refresh_checked(self, current: Tokens, owner: str, departure: Departure) -> Tokens:
        newest = await self.load()
        still_ours = await self._redis.get(REFRESH_LOCK)
        if newest is not None and newest.version != current.version:
            return newest
        if still_ours is None or _text(still_ours) != owner:
            # We were frozen or slow past our lock: whoever holds it now refreshes.
            log.warning("refresh lock lost before calling Kommo; standing down")
            return await self._wait_for_newer(current)
        if await self._redis.exists(REFRESH_REFUSED_SINCE):
            # Kommo already refused this refresh token: asking again cannot help.
            return await self._refused(current, "Kommo refused the refresh token")
        try:
            answer = await self._token_call(
                {"grant_type": "refresh_token", "refresh_token": current.refresh_token}, departure
            )
        except RefreshRefused as exc:
            return await self._refused(current, str(exc))
        tokens = self._from_answer(answer, current.version + 1)
        stored = await self._store_if_version(
            keys=[TOKENS, TOKEN_PROBLEM, REFRESH_REFUSED_SINCE],
            args=[current.version, json.dumps(asdict(tokens))],
        )
        if not stored:
            log.error("a newer Kommo token pair appeared during our refresh; keeping it")
            latest = await self.load()
            if latest is None:
                raise Unauthenticated("Kommo token vanished during a refresh")
            return latest
        self.refreshes += 1
        TOKEN_REFRESHES.inc()
        log.info("Kommo access token refreshed", extra={"version": tokens.version})
        return tokens

    async def _wait_for_newer(self, current: Tokens) -> Tokens:
        deadline = time.monotonic() + self._settings.kommo_refresh_lock_seconds
        while time.monotonic() < deadline:
            newest = await self.load()
            if newest is not None and newest.version != current.version:
                return newest
            await asyncio.sleep(_WAIT_STEP_SECONDS)
        raise Unavailable("a Kommo token refresh is in progress elsewhere; retry shortly")

    async def _refused(self, current: Tokens, reason: str) -> Tokens:
        newest = await self.load()
        if newest is not None and newest.version != current.version:
            return newest
        now = time.time()
        await self._redis.set(REFRESH_REFUSED_SINCE, now, nx=True)
        since = float(await self._redis.get(REFRESH_REFUSED_SINCE) or now)
        if now - since < self._settings.kommo_refresh_lock_seconds:
            # Maybe a replica frozen mid-refresh holds the new pair and will store it.
            raise Unavailable("Kommo refused the refresh token; waiting for a newer pair")
        log.error("Kommo refused the refresh token: the bridge must be authorised again")
        await self._redis.set(TOKEN_PROBLEM, reason)
        raise RefreshRefused(reason)

    async def refresh_if_idle(self) -> bool:
        """Refresh a pair nobody refreshed for `kommo_idle_refresh_days`."""
        tokens = await self.load()
        if tokens is None or not tokens.refresh_token or await self.problem():
            return False
        age = time.time() - (tokens.refreshed_at or 0)
        if age < self._settings.kommo_idle_refresh_days * 86400:
            return False
        await self.refresh(tokens)
        return True

    async def _token_call(
        self, grant: dict[str, str], departure: Departure | None = None
    ) -> dict[str, Any]:
        s = self._settings
        if await self.blocked():
            raise Unavailable(await self.blocked())
        body = {
            "client_id": s.kommo_client_id,
            "client_secret": s.kommo_client_secret,
            "redirect_uri": s.kommo_redirect_uri,
            **grant,
        }
        try:
            # Kommo counts the token endpoint too.
            response = await self._limiter.request(
                self._http,
                "POST",
                f"{s.base_url}/oauth2/access_token",
                departure=departure,
                json=body,
                timeout=s.kommo_timeout_seconds,
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
            await self.mark_blocked()
            raise Unavailable(await self.blocked())
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
        return Tokens(
            answer["access_token"],
            answer["refresh_token"],
            expires_at,
            version,
            refreshed_at=time.time(),
        )


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("hint") or body.get("detail") or body.get("title") or body)[:200]
    return f"HTTP {response.status_code}"


class TokenKeeper(BackgroundTask):
    """Keeps an idle account's refresh token alive (it dies after ~3 months unused) and
    repeats the long-lived token's expiry warning."""

    name = "token-keeper"
    _INTERVAL_SECONDS = 3600.0

    def __init__(self, tokens: TokenManager) -> None:
        self._tokens = tokens

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                if await self._tokens.refresh_if_idle():
                    log.info("idle Kommo account: token refreshed to keep it alive")
                current = await self._tokens.load()
                if current is not None:
                    self._tokens.warn_long_lived(current)
            except (BridgeError, RedisError) as exc:
                log.warning("token keeper: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._INTERVAL_SECONDS)
            except TimeoutError:
                pass
