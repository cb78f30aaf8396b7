"""Entities as Kommo's API v4 renders them (HAL JSON objects)."""

from __future__ import annotations

from sandbox.kommo.custom_fields import CustomFieldDef, FieldValues
from sandbox.kommo.ids import STATUS_LOST, STATUS_WON
from sandbox.kommo.records import (
    ChatMessage,
    ChatTemplate,
    Contact,
    Event,
    Lead,
    Note,
    Pipeline,
    Task,
    User,
    WebhookSubscription,
)
from sandbox.kommo.responses import JsonDict
from sandbox.kommo.state import AccountState

TASK_TYPES = (
    {"id": 1, "name": "Follow-up", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
    {"id": 2, "name": "Meeting", "color": None, "icon_id": None, "code": "MEETING"},
    {"id": 3, "name": "Ligação", "color": None, "icon_id": 5, "code": None},
)
TASK_TYPE_IDS = frozenset({1, 2, 3})


def _self(base: str, path: str) -> JsonDict:
    return {"self": {"href": f"{base}{path}"}}


def render_account(state: AccountState, base: str, with_task_types: bool) -> JsonDict:
    body: JsonDict = {
        "id": state.account_id,
        "name": state.name,
        "subdomain": state.subdomain,
        "created_at": 1735689600,
        "created_by": state.admin.id,
        "updated_at": 1735689600,
        "updated_by": state.admin.id,
        "current_user_id": state.admin.id,
        "country": "BR",
        "currency": "BRL",
        "currency_symbol": "R$",
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "is_loss_reason_enabled": True,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
        "_links": _self(base, "/api/v4/account"),
    }
    if with_task_types:
        body["_embedded"] = {"task_types": [dict(task_type) for task_type in TASK_TYPES]}
    return body


def render_user(user: User, base: str) -> JsonDict:
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "lang": user.lang,
        "rights": {
            "leads": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
            "contacts": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
            "mail_access": True,
            "catalog_access": True,
            "is_admin": user.is_admin,
            "is_free": user.is_free,
            "is_active": user.is_active,
            "group_id": user.group_id or None,
            "role_id": None,
        },
        "_links": _self(base, f"/api/v4/users/{user.id}"),
    }


def render_custom_fields(
    definitions: dict[int, CustomFieldDef], values: FieldValues
) -> list[JsonDict] | None:
    # Kommo renders "no values at all" as null, not as an empty list.
    rendered: list[JsonDict] = []
    for field_id, field_values in values.items():
        definition = definitions[field_id]
        rendered.append(
            {
                "field_id": definition.id,
                "field_name": definition.name,
                "field_code": definition.code,
                "field_type": definition.type,
                "values": [
                    _render_value(definition, value.value, value.enum_id, value.enum_code)
                    for value in field_values
                ],
            }
        )
    return rendered or None


def _render_value(
    definition: CustomFieldDef, value: str, enum_id: int | None, enum_code: str | None
) -> JsonDict:
    if definition.type in ("select", "multitext"):
        return {"value": value, "enum_id": enum_id, "enum_code": enum_code}
    return {"value": value}


def render_field_definition(definition: CustomFieldDef, entity: str, base: str) -> JsonDict:
    return {
        "id": definition.id,
        "name": definition.name,
        "type": definition.type,
        "code": definition.code,
        "sort": 500,
        "is_api_only": False,
        "entity_type": entity,
        "enums": [
            {"id": enum.id, "value": enum.value, "sort": position}
            for position, enum in enumerate(definition.enums, start=1)
        ]
        or None,
        "_links": _self(base, f"/api/v4/{entity}/custom_fields/{definition.id}"),
    }


def render_lead(lead: Lead, state: AccountState, base: str, with_contacts: bool) -> JsonDict:
    embedded: JsonDict = {
        "tags": [{"id": tag.id, "name": tag.name, "color": None} for tag in lead.tags],
        "companies": [],
    }
    if with_contacts:
        embedded["contacts"] = [
            {
                "id": contact_id,
                "is_main": position == 0,
                "_links": _self(base, f"/api/v4/contacts/{contact_id}"),
            }
            for position, contact_id in enumerate(lead.contact_ids)
        ]
    return {
        "id": lead.id,
        "name": lead.name,
        "price": lead.price,
        "responsible_user_id": lead.responsible_user_id,
        "group_id": lead.group_id,
        "status_id": lead.status_id,
        "pipeline_id": lead.pipeline_id,
        "loss_reason_id": None,
        "created_by": state.admin.id,
        "updated_by": 0,
        "created_at": lead.created_at,
        "updated_at": lead.updated_at,
        "closed_at": None,
        "closest_task_at": None,
        "is_deleted": False,
        "custom_fields_values": render_custom_fields(state.lead_fields, lead.fields),
        "score": None,
        "account_id": state.account_id,
        "labor_cost": None,
        "_links": _self(base, f"/api/v4/leads/{lead.id}"),
        "_embedded": embedded,
    }


def render_contact(
    contact: Contact, state: AccountState, base: str, lead_ids: list[int] | None
) -> JsonDict:
    """`lead_ids`: the contact's leads when `with=leads` was asked (None: not asked), from
    state.leads_of_contacts(), built once per request."""
    embedded: JsonDict = {"tags": [], "companies": []}
    if lead_ids is not None:
        embedded["leads"] = [
            {"id": lead_id, "_links": _self(base, f"/api/v4/leads/{lead_id}")}
            for lead_id in lead_ids
        ]
    return {
        "id": contact.id,
        "name": contact.name,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "responsible_user_id": contact.responsible_user_id,
        "group_id": 0,
        "created_by": state.admin.id,
        "updated_by": 0,
        "created_at": contact.created_at,
        "updated_at": contact.updated_at,
        "closest_task_at": None,
        "is_deleted": False,
        "is_unsorted": False,
        "custom_fields_values": render_custom_fields(state.contact_fields, contact.fields),
        "account_id": state.account_id,
        "_links": _self(base, f"/api/v4/contacts/{contact.id}"),
        "_embedded": embedded,
    }


def render_note(note: Note, state: AccountState, base: str) -> JsonDict:
    return {
        "id": note.id,
        "entity_id": note.entity_id,
        "created_by": note.created_by,
        "updated_by": note.created_by,
        "created_at": note.created_at,
        "updated_at": note.created_at,
        "responsible_user_id": note.responsible_user_id,
        "group_id": 0,
        "note_type": note.note_type,
        "params": note.params,
        "account_id": state.account_id,
        "_links": _self(base, f"/api/v4/{note.entity_type}/{note.entity_id}/notes/{note.id}"),
    }


def render_task(task: Task, state: AccountState, base: str) -> JsonDict:
    return {
        "id": task.id,
        "created_by": task.created_by,
        "updated_by": task.created_by,
        "created_at": task.created_at,
        "updated_at": task.created_at,
        "responsible_user_id": task.responsible_user_id,
        "group_id": 0,
        "entity_id": task.entity_id,
        "entity_type": task.entity_type,
        "duration": task.duration,
        "is_completed": task.is_completed,
        "task_type_id": task.task_type_id,
        "text": task.text,
        "result": [],
        "complete_till": task.complete_till,
        "account_id": state.account_id,
        "_links": _self(base, f"/api/v4/tasks/{task.id}"),
    }


def render_event(event: Event, state: AccountState, base: str) -> JsonDict:
    return {
        "id": event.id,
        "type": event.type,
        "entity_id": event.entity_id,
        "entity_type": event.entity_type,
        "created_by": event.created_by,
        "created_at": event.created_at,
        "value_after": event.value_after,
        "value_before": [],
        "account_id": state.account_id,
        "_links": _self(base, f"/api/v4/events/{event.id}"),
        "_embedded": {
            "entity": {
                "id": event.entity_id,
                "_links": _self(base, f"/api/v4/leads/{event.entity_id}"),
            }
        },
    }


def render_subscription(subscription: WebhookSubscription, state: AccountState) -> JsonDict:
    return {
        "id": subscription.id,
        "destination": subscription.destination,
        "created_at": subscription.created_at,
        "updated_at": subscription.created_at,
        "account_id": state.account_id,
        "created_by": state.admin.id,
        "sort": subscription.sort,
        "disabled": subscription.disabled,
        "settings": list(subscription.settings),
    }


def render_pipeline(pipeline: Pipeline, state: AccountState, base: str) -> JsonDict:
    path = f"/api/v4/leads/pipelines/{pipeline.id}"
    return {
        "id": pipeline.id,
        "name": pipeline.name,
        "sort": 1,
        "is_main": True,
        "is_unsorted_on": True,
        "is_archive": False,
        "account_id": state.account_id,
        "_links": _self(base, path),
        "_embedded": {
            "statuses": [
                {
                    "id": status.id,
                    "name": status.name,
                    "sort": status.sort,
                    "is_editable": status.id not in (STATUS_WON, STATUS_LOST),
                    "pipeline_id": pipeline.id,
                    "color": "#99ccff",
                    "type": status.type,
                    "account_id": state.account_id,
                    "_links": _self(base, f"{path}/statuses/{status.id}"),
                }
                for status in pipeline.statuses
            ]
        },
    }


def render_chat_message(message: ChatMessage) -> JsonDict:
    """The sandbox's own inspection shape, not a Kommo API shape."""
    return {
        "id": message.id,
        "lead_id": message.lead_id,
        "direction": message.direction,
        "author_type": message.author_type,
        "author_id": message.author_id,
        "author_name": message.author_name,
        "text": message.text,
        "at": message.at,
        "via": message.via,
        "message_type": message.message_type,
        "attachment": None
        if message.attachment is None
        else {
            "type": message.attachment.type,
            "link": message.attachment.link,
            "file_name": message.attachment.file_name,
        },
        "ref_id": message.ref_id,
        # False: the channel refused it (``failure`` says why, e.g. outside_24h_window).
        "delivered": message.delivered,
        "failure": message.failure or None,
        "template_id": message.template_id,
    }


def render_chat_template(
    template: ChatTemplate, state: AccountState, base: str, with_reviews: bool
) -> JsonDict:
    """One ``_embedded.chat_templates[]`` item; ``with=reviews`` adds a WhatsApp template's
    review status (Kommo's own ``amocrm`` templates have no review and no ``waba_*`` fields).
    """
    waba = template.type == "waba"
    body: JsonDict = {
        "id": template.id,
        "account_id": state.account_id,
        "name": template.name,
        "content": template.content,
        "type": template.type,
        # Kommo lets a WhatsApp template be edited only as a draft.
        "is_editable": template.review_status == "draft" or not waba,
        "created_at": template.created_at,
        "updated_at": template.updated_at,
        "attachment": None,
        "buttons": list(template.buttons),
        "_links": _self(base, f"/api/v4/chats/templates/{template.id}"),
    }
    if waba:
        body |= {
            "waba_category": template.waba_category,
            "waba_language": template.waba_language,
            "waba_header": template.waba_header,
            "waba_footer": template.waba_footer,
            "waba_examples": dict(template.waba_examples),
        }
        if with_reviews:
            body["review_status"] = template.review_status
    return body
