"""Settings from the environment (and `.env`), one class per service.

Built in each service's `main()` and passed down, never at import time, so tests can
build their own. A missing or bad variable stops the process with one line naming it.
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, ValidationError
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
