"""Settings of the conversation service (every variable is described in .env.example)."""

from __future__ import annotations

from typing import Literal

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
from services.conversation import rulebook, window
from services.conversation.proactive_policy import WorkingHours

# Kommo's won (142) and lost (143) statuses: the same ids in every pipeline.
_EVERY_PIPELINE_STATUSES = frozenset({142, 143})


class ConversationSettings(CommonSettings, N8nSettings, ContactPrivacySettings):
    kommo_subdomain: str = Field(
        default="", description="when set, webhooks from any other account are refused"
    )
    kommo_gateway_addr: str = Field(description="gateway replicas (dns:///… or ip:port list)")
    vendedor_addr: str = Field(description="vendedor replicas (dns:///… or ip:port list)")
    edge_public_url: str = Field(description="how n8n reaches the edge, for callback.url")
    n8n_reply_webhook_url: str = Field(default="", description="override for message.received")
    message_debounce_seconds: float = Field(default=3.0, ge=0)
    message_max_age_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="a customer message older than this when it reaches the bridge (Kommo "
        "redelivering a lost webhook days later) is recorded in the history but not answered "
        "as new; 0 = any age is answered",
    )
    whatsapp_window_origins: str = Field(
        default=window.DEFAULT_WINDOW_ORIGINS,
        description="chat origins (Kommo's `origin`) with WhatsApp's 24-hour customer-service "
        "window: outside it only an approved template reaches the customer. QR-code "
        "WhatsApp (com.amocrm.amocrmwa), Telegram and the site chat have none",
    )
    whatsapp_window_margin_seconds: float = Field(
        default=600.0,
        ge=0,
        lt=86400,
        description="the bridge stops sending free text this long before the 24 hours end "
        "(a message queued just before the end may leave after it)",
    )
    late_reply_mode: Literal["reopen", "vendedor"] = Field(
        default="reopen",
        description="a reply that finds WhatsApp's window closed: `reopen` sends the reopen "
        "template and delivers the reply when the customer writes again; `vendedor` hands "
        "it to the vendedor as a note and a task (the bot pauses)",
    )
    inbox_max_messages: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="messages a conversation holds waiting for its turn; past it the oldest "
        "waiting ones go (they stay in the history): one customer cannot grow the store "
        "or an envelope without bound",
    )
    bot_assume_command: str = Field(default="/assumir", pattern=r"^\S+$")
    bot_release_command: str = Field(default="/liberar", pattern=r"^\S+$")
    bot_auto_resume_after: float = Field(
        default=86400.0, ge=0, description="seconds of human silence before resuming (0 = never)"
    )
    bot_handoff_after: float = Field(
        default=180.0, ge=0, description="seconds without an n8n reply before handing off"
    )
    bot_reply_timeout: float = Field(
        default=60.0,
        ge=0,
        description="seconds without an n8n reply before the envelope is sent again "
        "(same event_id and reply_token; 0 = never)",
    )
    n8n_proactive_webhook_url: str = Field(default="", description="override for proactive")
    proactive_via_n8n: bool = Field(
        default=True, description="ask n8n for the first message (else use the template)"
    )
    proactive_n8n_timeout_seconds: float = Field(
        default=60.0, gt=0, description="n8n silent this long: the template goes instead"
    )
    proactive_hours: str = Field(default="08:00-20:00")
    proactive_days: str = Field(default="mon-sat")
    bridge_timezone: str = Field(default="America/Sao_Paulo")
    proactive_area_field: str = Field(
        default="Área", description="lead custom field (name or id) holding the lead's area"
    )
    proactive_dedupe_seconds: float = Field(
        default=30 * 86400.0, gt=0, description="the same lead and trigger again within this"
    )
    proactive_templates_file: str = Field(
        default="", description="JSON {trigger: template} replacing the built-in templates"
    )
    bot_rules_file: str = Field(
        default="",
        description="JSON bot rules (the body of PUT /bot-rules) used until rules are set "
        "through the API ('' = the defaults: the bot answers everyone at any hour)",
    )
    bot_rules_refresh_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="a replica that cannot hear the changes published (reconnecting to "
        "Redis) applies rules changed through the API within this long",
    )
    proactive_on_lead_add: str = Field(
        default="", description="trigger started by Kommo's lead-created webhook ('' = none)"
    )
    proactive_on_status: str = Field(
        default="",
        description="status_id:trigger or pipeline_id:status_id:trigger entries started by "
        "lead-status webhooks (won 142 and lost 143 need their pipeline)",
    )
    proactive_lead_add_delay_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="a start from PROACTIVE_ON_LEAD_ADD waits this long, then goes only if the "
        "customer has not written: a chat that creates its lead sends add_lead with its "
        "first message, and that customer is answered, not greeted",
    )
    n8n_lead_fields: str = Field(
        default="*",
        description="the lead's custom fields an envelope carries, by name, code or id, comma "
        "separated; '*' = all of them (what the shipped workflow reads: it hands every field "
        "to the AI); '' = none",
    )
    kommo_reply_field_id: int = Field(
        default=0,
        ge=0,
        description="the gateway's reply field: never among the lead's fields in an envelope",
    )
    history_turns: int = Field(default=20, ge=0, le=200, description="turns sent as history")
    context_cache_seconds: float = Field(
        default=15.0,
        ge=0,
        le=60,
        description="each replica reuses the lead, contact and vendedor a turn read for this "
        "long (dropped at once on erasure and when Kommo's webhooks say a lead or contact "
        "changed: edited, another responsible user, deleted, moved); 0 reads them every "
        "turn. At most 60 s, the gateway's own KOMMO_CACHE_TTL_SECONDS default",
    )
    history_max_chars: int = Field(default=8000, ge=0, description="bound on history text")
    webhook_max_fields: int = Field(default=1000, gt=0)
    worker_batch: int = Field(
        default=64, gt=0, description="webhook events a replica holds at once (read, not applied)"
    )
    event_lanes: int = Field(
        default=32,
        gt=0,
        le=1024,
        description="events are applied in this many lanes side by side, one conversation "
        "always in the same lane (its events in stream order)",
    )
    event_partitions: int = Field(
        default=16,
        gt=0,
        le=1024,
        description="webhook events go to this many streams by their conversation; each is "
        "read by one replica at a time (its lease), so a conversation's events are applied "
        "in order across replicas. The same in every replica; change it with no events queued",
    )
    turn_concurrency: int = Field(
        default=32, gt=0, description="turns a replica builds at once (lead, contact, vendedor)"
    )
    reply_concurrency: int = Field(
        default=32,
        gt=0,
        description="queued replies a replica delivers to Kommo at once (each may wait for "
        "Kommo's rate limit and its lead's reply slot)",
    )
    timer_concurrency: int = Field(
        default=8, gt=0, description="resumes, handoffs and Kommo notes/tasks at once, each"
    )
    proactive_concurrency: int = Field(
        default=8, gt=0, description="proactive starts and their fallbacks at once, each"
    )
    visibility_timeout_seconds: float = Field(
        default=15.0, gt=0, description="pending work idle this long is taken by a live replica"
    )
    max_event_attempts: int = Field(default=5, gt=0, description="tries before an event is parked")
    work_max_attempts: int = Field(
        default=5,
        gt=0,
        description="tries of a turn, delivery, reply, resume, handoff, notification or "
        "proactive start before it is parked as a dead letter",
    )
    work_retry_base_seconds: float = Field(
        default=2.0, gt=0, description="delay before a failed work item is tried again; doubles"
    )
    work_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="the longest delay between two tries of a work item"
    )
    data_retention_sweep_seconds: float = Field(
        default=300.0,
        gt=0,
        description="how often each replica erases conversations past DATA_RETENTION_DAYS",
    )
    dead_letter_alert_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="a dead letter younger than this keeps /health degraded (0 = never)",
    )

    @field_validator("bridge_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone("BRIDGE_TIMEZONE", value)

    @field_validator("kommo_reply_field_id", mode="before")
    @classmethod
    def _reply_field(cls, value: object) -> object:
        # The gateway's variable: empty = not set (the Chats API sends replies instead).
        if isinstance(value, str):
            value = value.strip() or "0"
            if not value.isdigit():
                raise ConfigurationError(
                    "KOMMO_REPLY_FIELD_ID",
                    "set KOMMO_REPLY_FIELD_ID to the id of the lead field replies are written "
                    "to, a number, or leave it empty (guide step 3)",
                )
        return value

    @field_validator("bot_rules_file")
    @classmethod
    def _rules_file(cls, value: str) -> str:
        if value:
            rulebook.load_file(value)  # a bad file stops the start with one line
        return value

    @field_validator("edge_public_url")
    @classmethod
    def _public_url(cls, value: str, info: ValidationInfo) -> str:
        check_replaced(
            "EDGE_PUBLIC_URL",
            value,
            "the address n8n uses to reach the edge (callback.url of every envelope; guide step 1)",
        )
        return check_public_url(
            "EDGE_PUBLIC_URL", value, bool(info.data.get("kommo_sandbox", False))
        )

    @field_validator("n8n_webhook_url", "n8n_reply_webhook_url", "n8n_proactive_webhook_url")
    @classmethod
    def _n8n_url(cls, value: str, info: ValidationInfo) -> str:
        return check_replaced(str(info.field_name).upper(), value, N8N_URL_ADVICE)

    @model_validator(mode="after")
    def _n8n(self) -> ConversationSettings:
        if not self.reply_webhook_url:
            raise ConfigurationError(
                ("N8N_WEBHOOK_URL", "N8N_REPLY_WEBHOOK_URL"),
                f"required: set N8N_WEBHOOK_URL to {N8N_URL_ADVICE}",
            )
        try:
            WorkingHours.parse(self.proactive_hours, self.proactive_days, self.bridge_timezone)
        except ValueError as exc:
            raise ConfigurationError(
                ("PROACTIVE_HOURS", "PROACTIVE_DAYS"),
                f"{exc} (defaults 08:00-20:00 and mon-sat; 00:00-24:00 and mon-sun = always)",
            ) from exc
        try:
            self.status_triggers  # noqa: B018  # validates the format
        except ValueError as exc:
            raise ConfigurationError("PROACTIVE_ON_STATUS", str(exc)) from exc
        return self

    @property
    def working_hours(self) -> WorkingHours:
        return WorkingHours.parse(self.proactive_hours, self.proactive_days, self.bridge_timezone)

    @property
    def status_triggers(self) -> dict[tuple[int, int], str]:
        """(pipeline_id, status_id) → trigger; pipeline 0 = the status in any pipeline.
        Won (142) and lost (143) are in every pipeline: they must name theirs."""
        triggers: dict[tuple[int, int], str] = {}
        for item in filter(None, (p.strip() for p in self.proactive_on_status.split(","))):
            *ids, trigger = item.split(":")
            if not trigger or not 1 <= len(ids) <= 2 or not all(i.isdigit() for i in ids):
                raise ValueError(
                    "must be status_id:trigger or pipeline_id:status_id:trigger entries, "
                    "e.g. 71000002:form,7100001:142:download"
                )
            pipeline, status = (0, int(ids[0])) if len(ids) == 1 else (int(ids[0]), int(ids[1]))
            if not pipeline and status in _EVERY_PIPELINE_STATUSES:
                raise ValueError(
                    f"status {status} (won/lost) exists in every pipeline: write "
                    f"pipeline_id:{status}:{trigger}"
                )
            triggers[(pipeline, status)] = trigger
        return triggers

    @property
    def window_policy(self) -> window.WindowPolicy:
        return window.WindowPolicy.parse(
            self.whatsapp_window_origins, 86400.0, self.whatsapp_window_margin_seconds
        )

    @property
    def lead_fields(self) -> frozenset[str] | None:
        """N8N_LEAD_FIELDS as a set to match against (None = every field)."""
        if self.n8n_lead_fields.strip() == "*":
            return None
        return frozenset(f.strip() for f in self.n8n_lead_fields.split(",") if f.strip())

    def status_trigger(self, pipeline_id: int, status_id: int) -> str:
        """The trigger a lead moved to this status of this pipeline starts ('' = none)."""
        triggers = self.status_triggers
        return triggers.get((pipeline_id, status_id)) or triggers.get((0, status_id), "")

    @property
    def proactive_webhook_url(self) -> str:
        return self.n8n_proactive_webhook_url or self.n8n_webhook_url

    @property
    def callback_url(self) -> str:
        return self.edge_public_url.rstrip("/") + "/send-response"

    @property
    def reply_webhook_url(self) -> str:
        return self.n8n_reply_webhook_url or self.n8n_webhook_url

    def secrets(self) -> list[str]:
        return self.n8n_secrets()

    @property
    def turn_check_after_ms(self) -> int:
        """When a turn without a reply is looked at first: the reply timeout (resend)
        or the handoff, whichever comes first; 0 = never."""
        limits = [x for x in (self.bot_reply_timeout, self.bot_handoff_after) if x > 0]
        return int(min(limits) * 1000) if limits else 0
