"""Settings of the edge (every variable is described in .env.example)."""

from __future__ import annotations

import hmac

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.common.settings import (
    CommonSettings,
    ConfigurationError,
    check_public_url,
    check_replaced,
    is_placeholder,
)

_PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password", "xxx", "test"})
_MIN_SECRET_LENGTH = 16


class EdgeSettings(CommonSettings):
    redis_url: str = Field(default="", description="only PINGed by /health")
    edge_host: str = "0.0.0.0"
    edge_port: int = Field(default=8000, ge=0, le=65535)
    edge_api_key: str = Field(description="the operator's key (X-API-Key): every endpoint")
    edge_n8n_api_key: str = Field(
        default="",
        description="n8n's key (X-API-Key): only POST /send-response and the scheduling "
        "status callback; optional, must differ from EDGE_API_KEY",
    )
    kommo_webhook_secret: str = Field(description="secret expected in the webhook URL")
    edge_public_url: str = Field(default="http://localhost:8000", description="how others reach us")
    edge_debug_endpoints: bool | None = Field(
        default=None,
        description="debug, reset and test endpoints on; unset = on only with KOMMO_SANDBOX",
    )
    edge_health_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="/health reuses its last answer this long: a flood of calls costs one "
        "round of checks per period (0 = only calls at the same moment share one)",
    )
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
    # The HTTP server itself (server.py, http_protocol.py).
    edge_max_header_bytes: int = Field(
        default=16384,
        ge=1024,
        le=1 << 20,
        description="a request line and headers longer than this are answered 431",
    )
    edge_request_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a request (line, headers and body) must arrive within this long of "
        "its first byte (or of the connection opening): else 408 and the connection closed",
    )
    edge_keep_alive_seconds: int = Field(
        default=5, ge=1, le=3600, description="an idle keep-alive connection is closed after"
    )
    edge_max_concurrency: int = Field(
        default=1000,
        ge=0,
        description="connections and requests in progress at once; beyond, 503 at once "
        "(0 = no limit)",
    )

    @field_validator("edge_api_key", "kommo_webhook_secret", "edge_n8n_api_key")
    @classmethod
    def _strong(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "edge_n8n_api_key" and value == "":
            return value  # optional: without it n8n uses EDGE_API_KEY
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
    def _public_url(cls, value: str, info: ValidationInfo) -> str:
        check_replaced(
            "EDGE_PUBLIC_URL",
            value,
            "the address Kommo and n8n use to reach this edge, "
            "e.g. https://bridge.yourcompany.com (guide step 1)",
        )
        return check_public_url(
            "EDGE_PUBLIC_URL", value, bool(info.data.get("kommo_sandbox", False))
        )

    @model_validator(mode="after")
    def _two_keys(self) -> EdgeSettings:
        if self.edge_n8n_api_key and hmac.compare_digest(
            self.edge_n8n_api_key.encode(), self.edge_api_key.encode()
        ):
            raise ConfigurationError(
                "EDGE_N8N_API_KEY",
                "must differ from EDGE_API_KEY: n8n's key opens only the answering "
                "endpoints; generate another with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        return self

    @property
    def debug_endpoints_on(self) -> bool:
        """EDGE_DEBUG_ENDPOINTS when set; unset, on only against the Kommo sandbox."""
        if self.edge_debug_endpoints is None:
            return self.kommo_sandbox
        return self.edge_debug_endpoints

    def secrets(self) -> list[str]:
        keys = [self.edge_api_key, self.kommo_webhook_secret, self.edge_n8n_api_key]
        return [key for key in keys if key]
