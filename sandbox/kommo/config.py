"""Settings of the Kommo sandbox, read from ``SANDBOX_*`` environment variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A ``SANDBOX_*`` variable that cannot be used; the message names it."""


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes one sandbox process; the defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 8100
    # Where Kommo-shaped webhooks are POSTed (secret in the query); empty = only recorded.
    bridge_webhook_url: str = ""
    subdomain: str = "previdas"
    account_id: int = 30000001
    client_id: str = "sandbox-client"
    # Fake credentials of a test double, public on purpose.
    client_secret: str = "sandbox-secret"  # noqa: S105
    redirect_uri: str = "http://127.0.0.1:8000/oauth/callback"
    # Valid at start (and again after a reset) so a bridge can bootstrap without a human.
    initial_refresh_token: str = "sandbox-refresh-0"  # noqa: S105
    auth_code: str = "sandbox-auth-code"
    access_token_ttl: float = 86400.0
    # Kommo allows 7 requests per second per integration; 0 = unlimited.
    rate_limit_rps: int = 7
    # Kommo blocks an account that keeps hitting the limit; 0 = never.
    block_after_429s: int = 0
    # Time a Salesbot run or a Chats API send takes to reach the chat and echo back.
    echo_delay: float = 0.2
    salesbot_id: int = 7001
    reply_field_id: int = 900001
    channel_secret: str = "sandbox-channel-secret"  # noqa: S105
    scope_id: str = "sandbox-scope"
    users: int = 9
    leads: int = 20
    # Kommo waits at most 5 s for a webhook answer and does not retry a Chats API hook.
    webhook_timeout: float = 5.0
    # Kommo retries a standard webhook that failed "for a while" (docs/kommo-api.md). Off by
    # default so a test sees exactly the deliveries it caused; the soak run turns it on.
    webhook_retries: int = 0
    webhook_retry_delay: float = 1.0


def _text(raw: str) -> str:
    return raw


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


_VARIABLES: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("SANDBOX_HOST", "host", _text),
    ("SANDBOX_PORT", "port", _count),
    ("SANDBOX_BRIDGE_WEBHOOK_URL", "bridge_webhook_url", _text),
    ("SANDBOX_SUBDOMAIN", "subdomain", _text),
    ("SANDBOX_ACCOUNT_ID", "account_id", _count),
    ("SANDBOX_CLIENT_ID", "client_id", _text),
    ("SANDBOX_CLIENT_SECRET", "client_secret", _text),
    ("SANDBOX_REDIRECT_URI", "redirect_uri", _text),
    ("SANDBOX_INITIAL_REFRESH_TOKEN", "initial_refresh_token", _text),
    ("SANDBOX_AUTH_CODE", "auth_code", _text),
    ("SANDBOX_ACCESS_TOKEN_TTL", "access_token_ttl", _seconds),
    ("SANDBOX_RATE_LIMIT_RPS", "rate_limit_rps", _count),
    ("SANDBOX_BLOCK_AFTER_429S", "block_after_429s", _count),
    ("SANDBOX_ECHO_DELAY", "echo_delay", _seconds),
    ("SANDBOX_SALESBOT_ID", "salesbot_id", _count),
    ("SANDBOX_REPLY_FIELD_ID", "reply_field_id", _count),
    ("SANDBOX_CHANNEL_SECRET", "channel_secret", _text),
    ("SANDBOX_SCOPE_ID", "scope_id", _text),
    ("SANDBOX_USERS", "users", _count),
    ("SANDBOX_LEADS", "leads", _count),
    ("SANDBOX_WEBHOOK_RETRIES", "webhook_retries", _count),
    ("SANDBOX_WEBHOOK_RETRY_DELAY", "webhook_retry_delay", _seconds),
)


def config_from_env(environ: Mapping[str, str]) -> SandboxConfig:
    """Build the configuration; unset or empty variables keep their defaults."""
    changes: dict[str, Any] = {}
    for variable, field, parse in _VARIABLES:
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            changes[field] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable}={raw!r} is invalid: {exc}") from exc
    config = dataclasses.replace(SandboxConfig(), **changes)
    if config.users < 1:
        raise ConfigError("SANDBOX_USERS must be at least 1 (the account needs its admin)")
    if config.port > 65535:
        raise ConfigError(f"SANDBOX_PORT={config.port} is not a TCP port")
    return config
