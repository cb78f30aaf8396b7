"""Settings of the vendedor service."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.common.settings import CommonSettings, ConfigurationError
from services.vendedor.domain import fallback_policy


class VendedorSettings(CommonSettings):
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_sync_interval_seconds: float = Field(
        default=900.0, ge=0, description="how often Kommo users are synced (0 = only on demand)"
    )
    vendedor_fallback: str = Field(
        default="none",
        description="for a lead whose responsible user is not an active vendedor: none, "
        "round_robin (over active vendedores) or a vendedor id",
    )
    vendedor_seed_samples: bool = Field(
        default=False, description="add the 3 sample custom vendedores of the original system"
    )

    @field_validator("vendedor_fallback")
    @classmethod
    def _fallback(cls, value: str) -> str:
        try:
            fallback_policy(value)
        except ValueError as exc:
            raise ConfigurationError("VENDEDOR_FALLBACK", f"{exc} (see .env.example)") from exc
        return value
