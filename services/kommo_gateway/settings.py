"""Settings of the Kommo gateway (SPEC.md §4)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    kommo_subdomain: str = Field(default="", description="previdas → https://previdas.kommo.com")
    kommo_base_url: str = Field(default="", description="overrides the account URL (sandbox)")
    kommo_sandbox: bool = Field(default=False, description="the base URL is the Kommo sandbox")
    kommo_client_id: str = ""
    kommo_client_secret: str = ""
    kommo_redirect_uri: str = ""
    kommo_auth_code: str = ""
    kommo_refresh_token: str = ""
    kommo_long_lived_token: str = ""
    kommo_rate_limit_rps: int = Field(
        default=7, gt=0, description="requests per second for all gateway replicas together"
    )
    kommo_salesbot_id: int = Field(default=0, ge=0, description="Salesbot that sends the field")
    kommo_reply_field_id: int = Field(default=0, ge=0, description="lead field the bot sends")
    kommo_channel_id: str = ""
    kommo_channel_secret: str = ""
    kommo_scope_id: str = ""
    kommo_amojo_base_url: str = "https://amojo.kommo.com"
    kommo_timeout_seconds: float = Field(default=10.0, gt=0)
    kommo_max_retries: int = Field(default=4, ge=0, description="retries of 429/5xx per call")
    kommo_refresh_ahead_seconds: float = Field(
        default=600.0, ge=0, description="refresh the access token this long before it expires"
    )
    kommo_reply_spacing_seconds: float = Field(
        default=3.0,
        ge=0,
        description="a lead's reply field belongs to one reply this long, so the Salesbot "
        "reads it before the next reply overwrites it",
    )
    kommo_delivery_grace_seconds: float = Field(
        default=3.0, ge=0, description="wait before looking for a reply of unknown outcome"
    )
    kommo_refresh_lock_seconds: float = Field(
        default=15.0,
        gt=0,
        description="how long one replica may hold the refresh lock; a replica that dies "
        "holding it blocks the others at most this long",
    )
    kommo_idle_refresh_days: float = Field(
        default=30.0,
        gt=0,
        description="refresh at least this often even without traffic: Kommo's refresh "
        "token dies after about 3 months unused",
    )
    kommo_oauth_url: str = Field(
        default="https://www.kommo.com/oauth",
        description="Kommo's consent page (the sandbox serves its own at <base>/oauth)",
    )
    kommo_breaker_failures: int = Field(
        default=5, gt=0, description="consecutive failures that open the circuit to Kommo"
    )
    kommo_breaker_cooldown_seconds: float = Field(
        default=15.0, gt=0, description="how long the circuit stays open before one trial"
    )
    kommo_blocked_backoff_seconds: float = Field(
        default=300.0,
        gt=0,
        description="after Kommo's 403 'blocked' page, calls fail fast this long",
    )
    kommo_cache_ttl_seconds: float = Field(
        default=60.0, ge=0, description="leads and contacts are re-read after this long"
    )

    @model_validator(mode="after")
    def _account(self) -> GatewaySettings:
        if not self.kommo_base_url and not self.kommo_subdomain:
            raise ValueError("KOMMO_SUBDOMAIN or KOMMO_BASE_URL is required")
        if not self.uses_chats_api and not (self.kommo_salesbot_id and self.kommo_reply_field_id):
            # Replies cannot reach customers otherwise; say so at start, not at the first reply.
            raise ValueError(
                "KOMMO_SALESBOT_ID and KOMMO_REPLY_FIELD_ID are required "
                "(or KOMMO_CHANNEL_ID, KOMMO_CHANNEL_SECRET and KOMMO_SCOPE_ID for the Chats API)"
            )
        return self

    @property
    def base_url(self) -> str:
        return (self.kommo_base_url or f"https://{self.kommo_subdomain}.kommo.com").rstrip("/")

    @property
    def consent_url(self) -> str:
        return f"{self.base_url}/oauth" if self.kommo_sandbox else self.kommo_oauth_url

    @property
    def uses_chats_api(self) -> bool:
        return bool(self.kommo_channel_id and self.kommo_channel_secret and self.kommo_scope_id)

    def secrets(self) -> list[str]:
        return [
            self.kommo_client_secret,
            self.kommo_auth_code,
            self.kommo_refresh_token,
            self.kommo_long_lived_token,
            self.kommo_channel_secret,
        ]
