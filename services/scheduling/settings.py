"""Settings of the scheduling service."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings, N8nSettings


class SchedulingSettings(CommonSettings, N8nSettings):
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

    @property
    def scheduling_url(self) -> str:
        return self.n8n_scheduling_webhook_url or self.n8n_webhook_url
