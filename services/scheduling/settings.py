"""Settings of the scheduling service."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.common.privacy import ContactPrivacySettings
from services.common.settings import (
    N8N_URL_ADVICE,
    CommonSettings,
    ConfigurationError,
    N8nSettings,
    check_public_url,
    check_replaced,
    check_timezone,
)


class SchedulingSettings(CommonSettings, N8nSettings, ContactPrivacySettings):
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_addr: str = Field(description="vendedor replicas (dns:///… or ip:port list)")
    conversation_addr: str = Field(description="conversation replicas (dns:///… or ip:port list)")
    n8n_scheduling_webhook_url: str = Field(default="", description="override for scheduling")
    edge_public_url: str = Field(description="how n8n reaches the edge, for the status callback")
    bridge_timezone: str = Field(
        default="America/Sao_Paulo", description="time zone of dates without an offset"
    )
    scheduling_dedupe_days: float = Field(
        default=30.0, gt=0, description="the same lead and slot within this long is a duplicate"
    )

    @field_validator("bridge_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone("BRIDGE_TIMEZONE", value)

    @field_validator("edge_public_url")
    @classmethod
    def _public_url(cls, value: str, info: ValidationInfo) -> str:
        check_replaced(
            "EDGE_PUBLIC_URL",
            value,
            "the address n8n uses to reach the edge (scheduling.status_callback.url; guide step 1)",
        )
        return check_public_url(
            "EDGE_PUBLIC_URL", value, bool(info.data.get("kommo_sandbox", False))
        )

    @field_validator("n8n_webhook_url", "n8n_scheduling_webhook_url")
    @classmethod
    def _n8n_url(cls, value: str, info: ValidationInfo) -> str:
        return check_replaced(str(info.field_name).upper(), value, N8N_URL_ADVICE)

    @model_validator(mode="after")
    def _n8n(self) -> SchedulingSettings:
        # Requests would otherwise wait in the outbox for an n8n nobody configured.
        if not self.scheduling_url:
            raise ConfigurationError(
                ("N8N_WEBHOOK_URL", "N8N_SCHEDULING_WEBHOOK_URL"),
                f"required: set N8N_WEBHOOK_URL to {N8N_URL_ADVICE}",
            )
        return self

    @property
    def scheduling_url(self) -> str:
        return self.n8n_scheduling_webhook_url or self.n8n_webhook_url
