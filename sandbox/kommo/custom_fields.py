"""Kommo's custom fields: a field's definition and options, the values a lead or contact
holds, the account's own fields (lead: the reply field, "Área", "Nome do vendedor",
"Agendamento"; contact: phone and e-mail), and how a PATCH's ``custom_fields_values``
applies, or is refused as Kommo refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sandbox.kommo.config import SCHEDULE_FIELD_ID, SELLER_NAME_FIELD_ID
from sandbox.kommo.ids import AREA_FIELD_ID, EMAIL_FIELD_ID, PHONE_FIELD_ID


@dataclass(frozen=True)
class FieldEnum:
    id: int
    value: str
    code: str | None = None


@dataclass(frozen=True)
class CustomFieldDef:
    id: int
    name: str
    type: str
    code: str | None = None
    enums: tuple[FieldEnum, ...] = ()


@dataclass(frozen=True)
class FieldValue:
    """One stored value of a custom field, as Kommo renders it."""

    value: str
    enum_id: int | None = None
    enum_code: str | None = None


@dataclass(frozen=True)
class FieldValueInput:
    value: object
    enum_id: int | None = None
    enum_code: str | None = None


@dataclass(frozen=True)
class FieldWrite:
    """One ``custom_fields_values`` item of a PATCH; ``values`` empty or None clears."""

    field_id: int | None
    field_code: str | None
    values: Sequence[FieldValueInput] | None


class FieldWriteError(Exception):
    """A custom field write Kommo would refuse with a validation error."""

    def __init__(self, path: str, detail: str, code: str = "NotSupportedChoice") -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail
        self.code = code


FieldValues = dict[int, list[FieldValue]]


def apply_field_writes(
    definitions: dict[int, CustomFieldDef],
    current: FieldValues,
    writes: Sequence[FieldWrite],
    path_prefix: str = "custom_fields_values",
) -> FieldValues:
    """The field values after ``writes``, or FieldWriteError; ``current`` is left untouched.

    Kommo replaces all values of each field written and leaves the other fields alone; an
    empty value clears the field.
    """
    updated = dict(current)
    for index, write in enumerate(writes):
        definition = _find_definition(definitions, write)
        if definition is None:
            raise FieldWriteError(
                f"{path_prefix}.{index}.field_id", "Field not found in the account", "NotFound"
            )
        values = [
            _coerce_value(definition, value, f"{path_prefix}.{index}.values.{position}")
            for position, value in enumerate(write.values or ())
        ]
        kept = [value for value in values if value.value != ""]
        if kept:
            updated[definition.id] = kept
        else:
            updated.pop(definition.id, None)
    return updated


def _find_definition(
    definitions: dict[int, CustomFieldDef], write: FieldWrite
) -> CustomFieldDef | None:
    if write.field_id is not None:
        return definitions.get(write.field_id)
    if write.field_code is not None:
        return next((d for d in definitions.values() if d.code == write.field_code.upper()), None)
    return None


def _coerce_value(definition: CustomFieldDef, value: FieldValueInput, path: str) -> FieldValue:
    raw = "" if value.value is None else str(value.value)
    if definition.type == "select":
        for enum in definition.enums:
            if value.enum_id == enum.id or (value.enum_id is None and raw == enum.value):
                return FieldValue(value=enum.value, enum_id=enum.id)
        raise FieldWriteError(f"{path}.value", f"{raw!r} is not an option of this field")
    if definition.type == "multitext":
        enum_code = (value.enum_code or "WORK").upper()
        for enum in definition.enums:
            if value.enum_id == enum.id or (value.enum_id is None and enum_code == enum.code):
                return FieldValue(value=raw, enum_id=enum.id, enum_code=enum.code)
        raise FieldWriteError(f"{path}.enum_code", f"{enum_code!r} is not a valid enum_code")
    return FieldValue(value=raw)


AREA_ENUMS = (
    FieldEnum(800001, "previdenciario"),
    FieldEnum(800002, "trabalhista"),
    FieldEnum(800003, "bpc-loas"),
    FieldEnum(800004, "civel"),
)
PHONE_MOB = FieldEnum(710001, "MOB", "MOB")
_PHONE_ENUMS = (
    FieldEnum(710002, "WORK", "WORK"),
    PHONE_MOB,
    FieldEnum(710003, "HOME", "HOME"),
    FieldEnum(710004, "OTHER", "OTHER"),
)
EMAIL_WORK = FieldEnum(720001, "WORK", "WORK")
_EMAIL_ENUMS = (EMAIL_WORK, FieldEnum(720002, "PRIV", "PRIV"), FieldEnum(720003, "OTHER", "OTHER"))


def lead_fields(reply_field_id: int) -> dict[int, CustomFieldDef]:
    return {
        reply_field_id: CustomFieldDef(reply_field_id, "Resposta do bot", "textarea"),
        AREA_FIELD_ID: CustomFieldDef(AREA_FIELD_ID, "Área", "select", enums=AREA_ENUMS),
        SELLER_NAME_FIELD_ID: CustomFieldDef(SELLER_NAME_FIELD_ID, "Nome do vendedor", "text"),
        SCHEDULE_FIELD_ID: CustomFieldDef(SCHEDULE_FIELD_ID, "Agendamento", "text"),
    }


def contact_fields() -> dict[int, CustomFieldDef]:
    return {
        PHONE_FIELD_ID: CustomFieldDef(
            PHONE_FIELD_ID, "Telefone", "multitext", code="PHONE", enums=_PHONE_ENUMS
        ),
        EMAIL_FIELD_ID: CustomFieldDef(
            EMAIL_FIELD_ID, "E-mail", "multitext", code="EMAIL", enums=_EMAIL_ENUMS
        ),
    }
