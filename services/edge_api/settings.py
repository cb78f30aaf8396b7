"""Settings of the edge (SPEC.md §4)."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.common.settings import CommonSettings

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
    def _strong(cls, value: str) -> str:
        if value.lower() in _PLACEHOLDERS or len(value) < _MIN_SECRET_LENGTH:
            raise ValueError(f"must be a real secret of at least {_MIN_SECRET_LENGTH} characters")
        return value

    def secrets(self) -> list[str]:
        return [self.edge_api_key, self.kommo_webhook_secret]
