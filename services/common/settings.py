"""Settings from the environment (and `.env`), one class per service.

Built in each service's `main()` and passed down, never at import time, so tests can
build their own. A missing or bad variable stops the process with one line naming it.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import sys
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

S = TypeVar("S", bound=BaseModel)

# What .env.example ships for values a deployment must replace (besides example.com
# addresses, which RFC 2606 reserves, so none can be a real one).
_PLACEHOLDERS = frozenset(
    {"change-me", "changeme", "your-subdomain", "00000000-0000-0000-0000-000000000000"}
)


class ConfigurationError(ValueError):
    """A setting that cannot be used, raised by a validator with the variables it is about
    (a check across fields has no field of its own to name) and what to do about it."""

    def __init__(self, variables: str | Sequence[str], advice: str) -> None:
        self.variables = (variables,) if isinstance(variables, str) else tuple(variables)
        self.advice = advice
        super().__init__(advice)


def is_placeholder(value: str) -> bool:
    """A value copied from .env.example that nobody replaced."""
    text = value.strip().lower()
    if text in _PLACEHOLDERS or "change-me" in text:
        return True
    host = (urlsplit(text).hostname if "//" in text else text) or ""
    return host == "example.com" or host.endswith(".example.com")


# What N8N_WEBHOOK_URL and its per-event overrides must be (every service that posts to n8n).
N8N_URL_ADVICE = (
    "the Production URL of your n8n workflow's Webhook node (examples/n8n/README.md; guide step 4)"
)


def check_replaced(variable: str, value: str, what: str) -> str:
    """`value`, unless it is a placeholder from .env.example: then one line saying what
    `variable` must be set to."""
    if is_placeholder(value):
        raise ConfigurationError(variable, f"set {variable} to {what}")
    return value


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine (localhost, 127.0.0.0/8, ::1): traffic to it never
    leaves the machine, so plain http is readable on no network (the edge's default, and
    `make run`'s public URL when none is set)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: wherever DNS says, e.g. 127.0.0.1.nip.io


def check_public_url(variable: str, value: str, sandbox: bool) -> str:
    """An address n8n sends the bridge's API key to: https outside the Kommo sandbox, so
    the key never crosses a network in clear text. Plain http only for a loopback host
    (n8n on the same machine), whose traffic never leaves it."""
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigurationError(
            variable, "must be an http(s) address such as https://bridge.yourcompany.com"
        )
    if parts.scheme != "https" and not sandbox and not is_loopback_url(value):
        raise ConfigurationError(
            variable,
            f"must be https outside the Kommo sandbox: n8n sends the bridge's API key to it "
            f"(set {variable} to https://…; plain http only for 127.0.0.1 or localhost)",
        )
    return value


def check_timezone(variable: str, value: str) -> str:
    """An IANA time zone name; ZoneInfo's own errors are KeyErrors pydantic would not catch."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            variable, f"{value!r} is not a time zone: use an IANA name such as America/Sao_Paulo"
        ) from exc
    return value


class CommonSettings(BaseSettings):
    """What every service reads."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    redis_url: str = Field(description="Redis holding all state, e.g. redis://localhost:6379/0")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    kommo_sandbox: bool = Field(
        default=False,
        description="Kommo is the project's sandbox (`make run` and the tests set it): the "
        "production-only checks of every service are relaxed",
    )
    grpc_host: str = Field(default="[::]", description="address the gRPC server binds")
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    shutdown_grace_seconds: float = Field(
        default=5.0, gt=0, description="time in-flight calls get to finish on SIGTERM"
    )
    grpc_deadline_seconds: float = Field(
        default=5.0, gt=0, description="default deadline of every outgoing gRPC call"
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus metrics port of a gRPC service (0 = off)"
    )
    metrics_host: str = Field(
        default="",
        validate_default=True,
        description="address the metrics listener binds; empty = GRPC_HOST's, so metrics are "
        "never reachable from further away than the service itself",
    )

    data_retention_days: float = Field(
        default=90.0,
        ge=0,
        description="personal data (conversations, scheduling requests, copies of leads and "
        "contacts) expires this long after a conversation's last message; 0 = kept until "
        "erased; fractions allowed",
    )

    @field_validator("metrics_host")
    @classmethod
    def _metrics_host(cls, value: str, info: ValidationInfo) -> str:
        return value or str(info.data.get("grpc_host", ""))

    @property
    def retention_seconds(self) -> int:
        """DATA_RETENTION_DAYS in whole seconds (at least 1); 0 = kept until erased."""
        return (
            max(math.ceil(self.data_retention_days * 86400), 1) if self.data_retention_days else 0
        )


_MIN_SIGNING_KEY_BYTES = 24


class N8nSettings(BaseSettings):
    """How a service reaches n8n (docs/n8n-contract.md): every service that posts envelopes."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    n8n_webhook_url: str = Field(default="", description="n8n webhook receiving every event")
    n8n_auth_header: str = Field(default="", description="optional 'Name: value' header to n8n")
    n8n_signing_secret: str = Field(default="", description="sign requests (Standard Webhooks)")
    n8n_timeout_seconds: float = Field(default=10.0, gt=0)
    n8n_retry_schedule: str = Field(
        default="0,1,5,30,120,600,1800,3600",
        pattern=r"^\s*\d+(\.\d+)?(\s*,\s*\d+(\.\d+)?)*\s*$",
        description="seconds before each attempt to reach n8n; then the dead letters",
    )
    work_lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a claimed piece of work is ours this long, renewed every third of it "
        "while it runs; a dead replica's work is taken over by a live one after this",
    )
    n8n_delivery_concurrency: int = Field(
        default=64,
        gt=0,
        le=512,
        description="envelopes a replica has at n8n at once (each waits for n8n's answer)",
    )
    poll_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="the slow poll (±20 %): an idle work pool claims when its next item is due, "
        "when a lease runs out, when the process or Redis (keyspace notifications) says its "
        "queue changed, and otherwise only this often (a notification missed while Redis "
        "was unreachable, a Redis refusing keyspace notifications)",
    )

    @field_validator("n8n_signing_secret")
    @classmethod
    def _signing_secret(cls, value: str) -> str:
        if not value:
            return value
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if len(key) < _MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                "must be 'whsec_' followed by base64 of at least 24 random bytes "
                "(Standard Webhooks); see .env.example"
            )
        return value

    @field_validator("n8n_auth_header")
    @classmethod
    def _auth_header(cls, value: str) -> str:
        if not value:
            return value
        name, colon, secret = value.partition(":")
        if not colon or not name.strip() or not secret.strip() or " " in name.strip():
            raise ConfigurationError(
                "N8N_AUTH_HEADER", "must be 'Name: value', e.g. X-Bridge-Token: <a secret>"
            )
        if is_placeholder(secret):
            raise ConfigurationError(
                "N8N_AUTH_HEADER",
                "set N8N_AUTH_HEADER's value to a real secret, the one the workflow's Header "
                "Auth expects (guide step 4)",
            )
        return value

    @model_validator(mode="after")
    def _n8n_verifies_the_bridge(self) -> N8nSettings:
        # Without a signature or a header n8n cannot tell our envelopes from anyone's
        # POST, and the workflow answers them with the bridge's API key (issue 19, item 6).
        # CommonSettings' switch, when the service has it: outside the sandbox by default.
        # With no n8n address at all the service's own check names N8N_WEBHOOK_URL first.
        urls = (value for name, value in self if name.startswith("n8n_") and name.endswith("_url"))
        if getattr(self, "kommo_sandbox", False) or not any(urls):
            return self
        if not (self.n8n_signing_secret or self.n8n_auth_header):
            raise ConfigurationError(
                ("N8N_SIGNING_SECRET", "N8N_AUTH_HEADER"),
                "outside the Kommo sandbox n8n must be able to refuse envelopes that are "
                "not the bridge's: set N8N_SIGNING_SECRET (Standard Webhooks signature) or "
                "N8N_AUTH_HEADER (the Webhook node's Header Auth) and check it in the "
                "workflow (examples/n8n/README.md; guide step 4)",
            )
        return self

    @property
    def lease_ms(self) -> int:
        return int(self.work_lease_seconds * 1000)

    @property
    def retry_schedule(self) -> list[float]:
        return [float(x) for x in self.n8n_retry_schedule.split(",")]

    def n8n_secrets(self) -> list[str]:
        header_value = self.n8n_auth_header.partition(":")[2].strip()
        return [self.n8n_signing_secret, header_value]


def load_settings(cls: type[S]) -> S:
    """Build settings, or exit with one line per unusable variable (never a traceback)."""
    try:
        return cls()  # values come from the environment and .env
    except ValidationError as exc:
        sys.exit("\n".join(configuration_errors(exc, cls.__name__)))
    except SettingsError as exc:
        sys.exit(_one_line(f"configuration error: {exc}"))


def configuration_errors(exc: ValidationError, settings_name: str) -> list[str]:
    """`configuration error: VARIABLE[, VARIABLE]: what to do`, one line per error.

    Inputs are never echoed: the variable may hold a secret.
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigurationError):
            variables, advice = cause.variables, cause.advice
        else:
            field = "_".join(str(part) for part in error["loc"]).upper()
            variables, advice = (field or settings_name,), _advice(error)
        lines.append(_one_line(f"configuration error: {', '.join(variables)}: {advice}"))
    return lines


def _advice(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "required: set it in the environment or in .env (see .env.example)"
    message = error["msg"].removeprefix("Value error, ")
    return f"{message} (see .env.example)"


def _one_line(text: str) -> str:
    return " ".join(text.split())
