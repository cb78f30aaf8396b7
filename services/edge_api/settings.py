"""Settings of the edge (every variable is described in .env.example)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from services.common.settings import (
    CommonSettings,
    ConfigurationError,
    check_replaced,
    is_placeholder,
)

_PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password", "xxx", "test"})
_MIN_SECRET_LENGTH = 16


class EdgeSettings(CommonSettings):
    redis_url: str = Field(default="", description="only PINGed by /health")
    edge_host: str = "0.0.0.0"
    edge_port: int = Field(default=8000, ge=0, le=65535)
    edge_api_key: str = Field(description="key n8n and operators send as X-API-Key")
    kommo_webhook_secret: str = Field(description="secret expected in the webhook URL")
    edge_public_url: str = Field(default="http://localhost:8000", description="how others reach us")
    edge_debug_endpoints: bool = Field(default=True, description="debug and reset endpoints on")
    edge_metrics_require_key: bool = Field(
        default=False,
        description="GET /metrics needs the API key too (X-API-Key, or Prometheus's "
        "`authorization` as a Bearer token); public by default: it holds no ids or secrets",
    )
    conversation_addr: str
    kommo_gateway_addr: str
    vendedor_addr: str
    scheduling_addr: str
    edge_max_body_bytes: int = Field(default=1 << 20, gt=0)
    webhook_ack_timeout_seconds: float = Field(
        default=1.5, gt=0, description="Kommo waits about 2 s; answer 503 before it gives up"
    )
    webhook_streams: int = Field(
        default=2, ge=1, le=16, description="ingest streams to the conversation service"
    )
    webhook_max_batch: int = Field(default=256, ge=1, le=4096)

    @field_validator("edge_api_key", "kommo_webhook_secret")
    @classmethod
    def _strong(cls, value: str, info: ValidationInfo) -> str:
        if (
            value.lower() in _PLACEHOLDERS
            or is_placeholder(value)
            or len(value) < _MIN_SECRET_LENGTH
        ):
            variable = str(info.field_name).upper()
            raise ConfigurationError(
                variable,
                f"must be a real secret of at least {_MIN_SECRET_LENGTH} characters: set "
                f"{variable} to the output of "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        return value

    @field_validator("edge_public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return check_replaced(
            "EDGE_PUBLIC_URL",
            value,
            "the address Kommo and n8n use to reach this edge, "
            "e.g. https://bridge.yourcompany.com (guide step 1)",
        )

    def secrets(self) -> list[str]:
        return [self.edge_api_key, self.kommo_webhook_secret]
