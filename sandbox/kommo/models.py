"""Request bodies of the Kommo API as the sandbox accepts them (pydantic at the boundary).

Kommo ignores fields it does not know, so these models do too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sandbox.kommo.custom_fields import FieldValueInput, FieldWrite


class _KommoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FieldValueIn(_KommoBody):
    value: str | int | float | bool | None = None
    enum_id: int | None = None
    enum_code: str | None = None


class CustomFieldIn(_KommoBody):
    field_id: int | None = None
    field_code: str | None = None
    values: list[FieldValueIn] | None = None

    def to_write(self) -> FieldWrite:
        return FieldWrite(
            field_id=self.field_id,
            field_code=self.field_code,
            values=None
            if self.values is None
            else [FieldValueInput(v.value, v.enum_id, v.enum_code) for v in self.values],
        )


class LeadPatch(_KommoBody):
    name: str | None = None
    price: int | None = None
    status_id: int | None = None
    pipeline_id: int | None = None
    responsible_user_id: int | None = None
    custom_fields_values: list[CustomFieldIn] | None = None
    request_id: str | None = None


class LeadPatchItem(LeadPatch):
    id: int


class ContactPatch(_KommoBody):
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    responsible_user_id: int | None = None
    custom_fields_values: list[CustomFieldIn] | None = None
    request_id: str | None = None


class ContactPatchItem(ContactPatch):
    id: int


class NoteIn(_KommoBody):
    note_type: str
    params: dict[str, Any] = Field(default_factory=dict)
    entity_id: int | None = None
    created_by: int | None = None
    responsible_user_id: int | None = None
    request_id: str | None = None


class TaskIn(_KommoBody):
    text: str
    complete_till: int
    entity_id: int | None = None
    entity_type: str | None = None
    responsible_user_id: int | None = None
    task_type_id: int = 1
    duration: int = 0
    request_id: str | None = None


class SalesbotRunV2(_KommoBody):
    bot_id: int
    entity_id: int
    # 1 = contact, 2 = lead.
    entity_type: int


class BotRunV4(_KommoBody):
    bot_id: int
    entity_id: int
    entity_type: str


class BotStopIn(_KommoBody):
    entity_id: int | None = None
    entity_type: str | None = None


class WebhookSubscribeIn(_KommoBody):
    destination: str
    settings: list[str]
    sort: int = 1


class WebhookUnsubscribeIn(_KommoBody):
    destination: str


class AmojoParticipant(_KommoBody):
    id: str
    name: str | None = None
    ref_id: str | None = None


class AmojoMessage(_KommoBody):
    type: str
    text: str = ""
    media: str | None = None
    file_name: str | None = None


class AmojoPayload(_KommoBody):
    timestamp: int
    msgid: str
    conversation_id: str
    sender: AmojoParticipant
    message: AmojoMessage
    receiver: AmojoParticipant | None = None
    msec_timestamp: int | None = None
    silent: bool = False


class AmojoEvent(_KommoBody):
    event_type: str
    payload: AmojoPayload


class ChatTemplateIn(_KommoBody):
    """A new chat template (``POST /api/v4/chats/templates``): created as a draft."""

    name: str
    content: str
    type: str = "waba"
    waba_category: str | None = None
    waba_language: str | None = None
    waba_header: str | None = None
    waba_footer: str | None = None
    waba_examples: dict[str, str] | None = None
    buttons: list[dict[str, Any]] | None = None
    request_id: str | None = None


class ChatTemplatePatchItem(_KommoBody):
    """An edit of a template (``PATCH /api/v4/chats/templates``): only drafts take one."""

    id: int
    name: str | None = None
    content: str | None = None
    waba_category: str | None = None
    waba_language: str | None = None
    waba_header: str | None = None
    waba_footer: str | None = None
    waba_examples: dict[str, str] | None = None
    buttons: list[dict[str, Any]] | None = None
    request_id: str | None = None
