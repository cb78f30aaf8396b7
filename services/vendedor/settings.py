"""Settings of the vendedor service."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class VendedorSettings(CommonSettings):
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_sync_interval_seconds: float = Field(
        default=900.0, ge=0, description="how often Kommo users are synced (0 = only on demand)"
    )
