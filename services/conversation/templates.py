"""WhatsApp templates: what the bridge sends when free text cannot reach the customer.

Outside WhatsApp's 24-hour window (window.py) only an approved template is delivered. In
Kommo a template is sent by a Salesbot whose Message step holds it; its markers
(`{{lead.cf.<id>}}`, `{{contact.name}}`, ...) are filled from the lead's fields when the bot
runs. So a template is configured here, per purpose, as the Salesbot that sends it, the
Kommo template it holds (to check that WhatsApp approved it) and which lead fields the
bridge writes first, each from a named variable.

Purposes: `reopen` (a reply that found the window closed: asks the customer to write
again, and the kept reply goes when they do), `scheduling_confirmation`, `proactive` (any
proactive start) and `proactive:<trigger>` (one trigger). Variables: what n8n gives with
its answer, else the bridge's own — `nome` (the contact's name), `lead` (the lead's
name), `vendedor` (the responsible vendedor's name), `trigger`, `texto` (the text that could
not go as free text).

Pure: no I/O. Kept in the bot rules document (rules_document.py), validated and versioned
with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.kommo_ids import KOMMO_ID_MAX, KOMMO_ID_MIN

REOPEN = "reopen"
SCHEDULING_CONFIRMATION = "scheduling_confirmation"
PROACTIVE = "proactive"
_PURPOSE = re.compile(r"^(reopen|scheduling_confirmation|proactive(:[a-z0-9_-]{1,40})?)$")
_VARIABLE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
MAX_TEMPLATES = 50
MAX_FIELDS = 20
# A value written into a lead field for a template's marker.
MAX_VALUE_CHARS = 1024

TemplateId = Annotated[int, Field(ge=KOMMO_ID_MIN, le=KOMMO_ID_MAX)]


class TemplateRef(BaseModel):
    """One approved WhatsApp template, as the bridge sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    salesbot_id: TemplateId = Field(
        description="the Kommo Salesbot whose Message step holds the template"
    )
    template_id: TemplateId | None = Field(
        default=None,
        description="Kommo's id of the template (GET /api/v4/chats/templates): the bridge "
        "checks that WhatsApp approved it before sending, and says so in /health",
    )
    fields: dict[TemplateId, str] = Field(
        default_factory=dict,
        max_length=MAX_FIELDS,
        description="lead custom field id → the variable written into it before the bot "
        "runs (the template's {{lead.cf.<id>}} markers read them)",
    )

    @field_validator("fields")
    @classmethod
    def _variables(cls, value: dict[int, str]) -> dict[int, str]:
        for field_id, name in value.items():
            if not _VARIABLE.match(name):
                raise ValueError(
                    f"fields.{field_id}: {name[:40]!r} is not a variable name "
                    "(lower-case letters, digits and _, e.g. nome, vendedor, horario)"
                )
        return value

    @property
    def variables(self) -> list[str]:
        return sorted(set(self.fields.values()))


def is_purpose(name: str) -> bool:
    return bool(_PURPOSE.match(name))


def check_purposes(templates: Mapping[str, TemplateRef]) -> None:
    if len(templates) > MAX_TEMPLATES:
        raise ValueError(f"templates: at most {MAX_TEMPLATES}")
    for purpose in templates:
        if not _PURPOSE.match(purpose):
            raise ValueError(
                f"templates.{purpose[:40]}: not a purpose: use reopen, "
                "scheduling_confirmation, proactive or proactive:<trigger>"
            )


def for_purpose(templates: Mapping[str, TemplateRef], purpose: str) -> TemplateRef | None:
    """The template for this purpose; a trigger without its own uses `proactive`'s."""
    found = templates.get(purpose)
    if found is None and purpose.startswith(PROACTIVE + ":"):
        found = templates.get(PROACTIVE)
    return found


def proactive_purpose(trigger: str) -> str:
    return f"{PROACTIVE}:{trigger}"


def field_values(ref: TemplateRef, variables: Mapping[str, str]) -> dict[int, str]:
    """What to write into the lead before the template's bot runs: each field its
    variable's value (empty when nobody gave one), bounded."""
    return {
        field_id: str(variables.get(name, ""))[:MAX_VALUE_CHARS]
        for field_id, name in ref.fields.items()
    }
