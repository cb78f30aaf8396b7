"""Settings of the scheduling service."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class SchedulingSettings(CommonSettings):
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_addr: str = Field(description="vendedor replicas (dns:///… or ip:port list)")
    n8n_webhook_url: str = Field(default="", description="n8n webhook receiving every event")
    n8n_scheduling_webhook_url: str = Field(default="", description="override for scheduling")
