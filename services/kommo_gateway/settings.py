"""Settings of the Kommo gateway (every variable is described in .env.example)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.common.settings import CommonSettings, ConfigurationError, is_placeholder

# What to do about each value .env.example ships as a placeholder; the step is the one of
# README's "Connecting a real Kommo account" that gives the value.
_WHERE = {
    "kommo_subdomain": "to your account's subdomain: yourcompany for "
    "https://yourcompany.kommo.com (guide step 1)",
    "kommo_client_id": "to the Integration ID (Kommo → Settings → Integrations → your "
    "integration → Keys and scopes; guide step 2)",
    "kommo_client_secret": "to the Secret key (Kommo → Settings → Integrations → your "
    "integration → Keys and scopes; guide step 2)",
    "kommo_redirect_uri": "to <EDGE_PUBLIC_URL>/oauth/callback, exactly the Redirect URL "
    "registered in the integration (guide step 2)",
    "kommo_salesbot_id": "to your Salesbot's id, a number (Kommo → Salesbot → your bot with "
    "one step sending the reply field: the number in its address; guide step 3)",
    "kommo_reply_field_id": "to the id of the lead field replies are written to, a number "
    "(Kommo → Settings → Custom fields → Leads → the field's settings; guide step 3)",
}


class GatewaySettings(CommonSettings):
    kommo_subdomain: str = Field(default="", description="previdas → https://previdas.kommo.com")
    kommo_base_url: str = Field(default="", description="overrides the account URL (sandbox)")
    kommo_client_id: str = ""
    kommo_client_secret: str = ""
    kommo_redirect_uri: str = ""
    kommo_auth_code: str = ""
    kommo_refresh_token: str = ""
    kommo_long_lived_token: str = ""
    kommo_rate_limit_rps: int = Field(
        default=7, gt=0, description="requests per second for all gateway replicas together"
    )
    kommo_priority_aging_seconds: float = Field(
        default=2.0,
        gt=0,
        description="a call waiting for Kommo's budget moves up one priority class (replies, "
        "context reads, notes and tasks, syncs and operators) for every this long waited, so "
        "a flood of one kind never starves another",
    )
    kommo_call_seconds: float = Field(
        default=1.5,
        ge=0,
        description="kept out of a caller's deadline for the Kommo call itself: a call that "
        "could not leave before its deadline less this is refused at once (429 with "
        "Retry-After at the edge) instead of timing out after waiting",
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
    kommo_evidence_skew_seconds: float = Field(
        default=1.0,
        ge=0,
        description="a bot message event counts as a reply's evidence from this long before "
        "its Salesbot run started: Kommo's clock and ours differ, and events carry whole "
        "seconds; keep KOMMO_REPLY_SPACING_SECONDS above it plus a second plus the bot's "
        "sending time",
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
    kommo_templates_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description="the chat templates and their WhatsApp review status are read from Kommo "
        "again after this long (each replica keeps its copy; served stale when Kommo is down)",
    )

    @field_validator(
        "kommo_subdomain", "kommo_client_id", "kommo_client_secret", "kommo_redirect_uri"
    )
    @classmethod
    def _replaced(cls, value: str, info: ValidationInfo) -> str:
        name = str(info.field_name)
        if is_placeholder(value):
            raise ConfigurationError(name.upper(), f"set {name.upper()} {_WHERE[name]}")
        return value

    @field_validator("kommo_salesbot_id", "kommo_reply_field_id", mode="before")
    @classmethod
    def _kommo_id(cls, value: object, info: ValidationInfo) -> object:
        # Empty = not set (the Chats API is used instead); anything else must be Kommo's id.
        name = str(info.field_name)
        if isinstance(value, str):
            value = value.strip() or "0"
            if not value.isdigit():
                raise ConfigurationError(name.upper(), f"set {name.upper()} {_WHERE[name]}")
        return value

    @model_validator(mode="after")
    def _account(self) -> GatewaySettings:
        if not self.kommo_base_url and not self.kommo_subdomain:
            raise ConfigurationError(
                ("KOMMO_SUBDOMAIN", "KOMMO_BASE_URL"),
                f"set KOMMO_SUBDOMAIN {_WHERE['kommo_subdomain']}",
            )
        if not self.uses_chats_api:
            # Replies cannot reach customers otherwise; say so at start, not at the first reply.
            unset = [
                name
                for name in ("kommo_salesbot_id", "kommo_reply_field_id")
                if not getattr(self, name)
            ]
            if unset:
                advice = "; ".join(f"set {name.upper()} {_WHERE[name]}" for name in unset)
                raise ConfigurationError(
                    [name.upper() for name in unset],
                    f"{advice} — or, to send through the Chats API instead, set "
                    "KOMMO_CHANNEL_ID, KOMMO_CHANNEL_SECRET and KOMMO_SCOPE_ID",
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
