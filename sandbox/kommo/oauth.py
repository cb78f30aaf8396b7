"""Kommo's OAuth2: one-time codes, rotating single-use refresh tokens, expiring JWTs."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.ids import FIRST_USER_ID

OAUTH_PROBLEM_TYPE = "https://developers.kommo.com/docs/oauth/OAuthProblemJson"
# Kommo: the consent code lives about 20 minutes, a refresh token about 3 months.
AUTH_CODE_TTL = 20 * 60
REFRESH_TOKEN_TTL = 90 * 86400


class OAuthProblem(Exception):
    """A refusal of the token endpoint, in Kommo's OAuthProblemJson shape."""

    def __init__(self, status: int, title: str, hint: str, detail: str) -> None:
        super().__init__(hint)
        self.status = status
        self.title = title
        self.hint = hint
        self.detail = detail

    def body(self) -> dict[str, object]:
        return {
            "hint": self.hint,
            "title": self.title,
            "type": OAUTH_PROBLEM_TYPE,
            "status": self.status,
            "detail": self.detail,
        }


def _bad_request(hint: str) -> OAuthProblem:
    return OAuthProblem(
        400,
        "Incorrect data",
        hint,
        "The request is missing a required parameter, includes an invalid parameter value, "
        "includes a parameter more than once, or is otherwise malformed.",
    )


def _refused_refresh(hint: str) -> OAuthProblem:
    return OAuthProblem(401, "Unauthorized", hint, "The refresh token is invalid.")


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str | None
    client_id: str | None
    client_secret: str | None
    redirect_uri: str | None
    code: str | None = None
    refresh_token: str | None = None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    server_time: int

    def body(self) -> dict[str, object]:
        return {
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "server_time": self.server_time,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
        }


class RefreshState(enum.Enum):
    VALID = "valid"
    USED = "used"
    REVOKED = "revoked"


@dataclass
class _RefreshToken:
    state: RefreshState
    expires_at: float


@dataclass
class _AuthCode:
    expires_at: float
    used: bool = False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    """Issues and checks tokens the way Kommo's authorisation server does."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._signing_key = secrets.token_bytes(32)
        self._access: dict[str, float] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self.token_refreshes = 0
        self.code_exchanges = 0
        self.refused_refresh_tokens = 0
        self.restore_seed_grants()

    def restore_seed_grants(self) -> None:
        """Make the configured refresh token and code valid again; other grants stay."""
        now = time.time()
        self._refresh[self._config.initial_refresh_token] = _RefreshToken(
            RefreshState.VALID, now + REFRESH_TOKEN_TTL
        )
        self._codes[self._config.auth_code] = _AuthCode(now + AUTH_CODE_TTL)

    def reset_counters(self) -> None:
        self.token_refreshes = 0
        self.code_exchanges = 0
        self.refused_refresh_tokens = 0

    def issue_code(self) -> str:
        code = "def50200" + secrets.token_hex(32)
        self._codes[code] = _AuthCode(time.time() + AUTH_CODE_TTL)
        return code

    def knows_client(self, client_id: str | None) -> bool:
        return client_id == self._config.client_id

    def grant(self, request: TokenRequest) -> TokenPair:
        self._check_client(request)
        if request.grant_type == "authorization_code":
            self._redeem_code(request.code)
            self.code_exchanges += 1
        elif request.grant_type == "refresh_token":
            self._redeem_refresh_token(request.refresh_token)
            self.token_refreshes += 1
        else:
            raise OAuthProblem(
                400,
                "Incorrect data",
                "Check the `grant_type` parameter",
                "The authorization grant type is not supported by the authorization server.",
            )
        return self._issue_pair()

    def _check_client(self, request: TokenRequest) -> None:
        if (
            request.client_id != self._config.client_id
            or request.client_secret != self._config.client_secret
        ):
            raise OAuthProblem(
                401, "Unauthorized", "Client authentication failed", "Client authentication failed"
            )
        if request.redirect_uri != self._config.redirect_uri:
            raise _bad_request("Check the `redirect_uri` parameter")

    def _redeem_code(self, code: str | None) -> None:
        if not code:
            raise _bad_request("Check the `code` parameter")
        record = self._codes.get(code)
        if record is None:
            raise _bad_request("Cannot decrypt the authorization code")
        if record.used:
            raise _bad_request("Authorization code has been revoked")
        if time.time() >= record.expires_at:
            raise _bad_request("Authorization code has expired")
        record.used = True

    def _redeem_refresh_token(self, token: str | None) -> None:
        if not token:
            raise _bad_request("Check the `refresh_token` parameter")
        record = self._refresh.get(token)
        hint = _refusal_hint(record)
        if record is None or hint is not None:
            self.refused_refresh_tokens += 1
            raise _refused_refresh(hint or "Cannot decrypt the refresh token")
        # Single use: the token that was just presented never works again.
        record.state = RefreshState.USED

    def _issue_pair(self) -> TokenPair:
        now = time.time()
        ttl = self._config.access_token_ttl
        refresh_token = "def50200" + secrets.token_hex(48)
        self._refresh[refresh_token] = _RefreshToken(RefreshState.VALID, now + REFRESH_TOKEN_TTL)
        return TokenPair(
            access_token=self._sign_access_token(now, ttl),
            refresh_token=refresh_token,
            expires_in=int(ttl),
            server_time=int(now),
        )

    def _sign_access_token(self, now: float, ttl: float) -> str:
        jti = str(uuid.uuid4())
        self._access[jti] = now + ttl
        header = {"typ": "JWT", "alg": "HS256"}
        claims = {
            "aud": self._config.client_id,
            "jti": jti,
            "iat": int(now),
            "nbf": int(now),
            # Rounded down so a client trusting `exp` never uses a token the server refuses.
            "exp": int(now + ttl),
            "sub": str(FIRST_USER_ID),
            "grant_type": "",
            "account_id": self._config.account_id,
            "base_domain": "kommo.com",
            "version": 2,
            "scopes": ["crm", "notifications"],
        }
        signing_input = f"{_b64url(_dumps(header))}.{_b64url(_dumps(claims))}"
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def is_valid_access_token(self, token: str | None) -> bool:
        if not token:
            return False
        parts = token.split(".")
        if len(parts) != 3:
            return False
        signing_input = f"{parts[0]}.{parts[1]}"
        expected = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _b64url_decode(parts[2])):
                return False
            claims: Any = json.loads(_b64url_decode(parts[1]))
        except ValueError:
            return False
        jti = claims.get("jti") if isinstance(claims, dict) else None
        expires_at = self._access.get(jti) if isinstance(jti, str) else None
        return expires_at is not None and time.time() < expires_at

    def expire_access_tokens(self) -> int:
        now = time.time()
        for jti in self._access:
            self._access[jti] = min(self._access[jti], now)
        return len(self._access)

    def revoke_refresh_tokens(self) -> int:
        revoked = 0
        for record in self._refresh.values():
            if record.state is RefreshState.VALID:
                record.state = RefreshState.REVOKED
                revoked += 1
        return revoked


def _refusal_hint(record: _RefreshToken | None) -> str | None:
    if record is None:
        return "Cannot decrypt the refresh token"
    if record.state is not RefreshState.VALID:
        return "Token has been revoked"
    if time.time() >= record.expires_at:
        return "Token has expired"
    return None


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
