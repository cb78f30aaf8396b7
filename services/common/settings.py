"""Settings from the environment (and `.env`), one class per service.

Built in each service's `main()` and passed down, never at import time, so tests can
build their own. A missing or bad variable stops the process with one line naming it.
"""

from __future__ import annotations

import base64
import sys
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="CommonSettings")


class CommonSettings(BaseSettings):
    """What every service reads."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    redis_url: str = Field(description="Redis holding all state, e.g. redis://localhost:6379/0")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
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


_MIN_SIGNING_KEY_BYTES = 24


class N8nSettings(BaseSettings):
    """How a service reaches n8n (SPEC.md §3.2): every service that posts envelopes."""

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
        default=30.0,
        gt=0,
        description="a claimed piece of work is ours this long; then a live replica may "
        "take it over (longer than any one step: n8n's timeout, a delivery)",
    )
    poll_interval_seconds: float = Field(default=0.1, gt=0)

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
    """Build settings or exit with one clear line per bad variable."""
    try:
        return cls()  # values come from the environment
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            variable = "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"configuration error: {variable}: {error['msg']}")
        sys.exit("\n".join(lines))
