"""Settings of the conversation service (SPEC.md §4)."""

from __future__ import annotations

import base64

from pydantic import Field, field_validator

from services.common.settings import CommonSettings

_MIN_SIGNING_KEY_BYTES = 24


class ConversationSettings(CommonSettings):
    kommo_subdomain: str = Field(
        default="", description="when set, webhooks from any other account are refused"
    )
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_addr: str = Field(description="vendedor replicas (dns:///… or ip:port list)")
    edge_public_url: str = Field(description="how n8n reaches the edge, for callback.url")
    n8n_webhook_url: str = Field(description="n8n webhook receiving every event")
    n8n_reply_webhook_url: str = Field(default="", description="override for message.received")
    n8n_auth_header: str = Field(default="", description="optional 'Name: value' header to n8n")
    n8n_signing_secret: str = Field(default="", description="sign requests (Standard Webhooks)")
    n8n_timeout_seconds: float = Field(default=10.0, gt=0)
    message_debounce_seconds: float = Field(default=3.0, ge=0)
    bot_assume_command: str = Field(default="/assumir", pattern=r"^\S+$")
    bot_release_command: str = Field(default="/liberar", pattern=r"^\S+$")
    bot_auto_resume_after: float = Field(
        default=86400.0, ge=0, description="seconds of human silence before resuming (0 = never)"
    )
    bot_handoff_after: float = Field(
        default=180.0, ge=0, description="seconds without an n8n reply before handing off"
    )
    history_turns: int = Field(default=20, ge=0, le=200, description="turns sent as history")
    history_max_chars: int = Field(default=8000, ge=0, description="bound on history text")
    webhook_max_fields: int = Field(default=1000, gt=0)
    worker_batch: int = Field(default=64, gt=0, description="stream entries read at once")
    visibility_timeout_seconds: float = Field(
        default=15.0, gt=0, description="pending work idle this long is taken by a live replica"
    )
    poll_interval_seconds: float = Field(default=0.1, gt=0)
    work_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a claimed turn, delivery or reply is ours this long; then a live replica "
        "may take it over (longer than any one step: n8n's timeout, a delivery)",
    )
    max_event_attempts: int = Field(default=5, gt=0, description="tries before an event is parked")
    n8n_retry_schedule: str = Field(
        default="0,1,5,30,120,600,1800,3600",
        pattern=r"^\s*\d+(\.\d+)?(\s*,\s*\d+(\.\d+)?)*\s*$",
        description="seconds before each attempt to reach n8n; then the dead letters",
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

    @property
    def lease_ms(self) -> int:
        return int(self.work_lease_seconds * 1000)

    @property
    def retry_schedule(self) -> list[float]:
        return [float(x) for x in self.n8n_retry_schedule.split(",")]

    @property
    def callback_url(self) -> str:
        return self.edge_public_url.rstrip("/") + "/send-response"

    @property
    def reply_webhook_url(self) -> str:
        return self.n8n_reply_webhook_url or self.n8n_webhook_url

    def secrets(self) -> list[str]:
        header_value = self.n8n_auth_header.partition(":")[2].strip()
        return [self.n8n_signing_secret, header_value]
