"""Proactive conversations: working hours, areas, templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from services.common.errors import Conflict, InvalidInput
from services.conversation import proactive_policy
from services.conversation.proactive_policy import WorkingHours


def test_inside_working_hours_a_message_goes_now() -> None:
    hours = WorkingHours.parse("08:00-20:00", "mon-sat", "America/Sao_Paulo")
    wednesday_noon_sp = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # 12:00 in São Paulo
    assert hours.next_open(wednesday_noon_sp) == wednesday_noon_sp


def test_outside_working_hours_it_waits_for_the_next_window() -> None:
    hours = WorkingHours.parse("08:00-20:00", "mon-sat", "America/Sao_Paulo")
    saturday_night = datetime(2026, 11, 29, 0, 30, tzinfo=UTC)  # Sat 21:30 in São Paulo
    opens = hours.next_open(saturday_night)
    assert opens.isoformat() == "2026-11-30T08:00:00-03:00", "Sunday is closed"


def test_always_open_and_bad_settings() -> None:
    always = WorkingHours.parse("00:00-24:00", "mon-sun", "UTC")
    now = datetime(2026, 11, 29, 23, 59, tzinfo=UTC)
    assert always.next_open(now) == now
    with pytest.raises(ValueError, match="08:00-20:00"):
        WorkingHours.parse("8h-20h", "mon-sat", "UTC")
    with pytest.raises(ValueError, match="mon-sat"):
        WorkingHours.parse("08:00-20:00", "seg-sab", "UTC")


@dataclass
class Field:
    field_id: int
    field_name: str
    values: list[str] = field(default_factory=list)


def test_the_area_comes_from_the_configured_field_by_name_or_id() -> None:
    fields = [Field(1, "Outro", ["x"]), Field(900002, "Área", ["Previdenciário"])]
    assert proactive_policy.lead_area(fields, "Área") == "previdenciario"
    assert proactive_policy.lead_area(fields, "area") == "previdenciario"
    assert proactive_policy.lead_area(fields, "900002") == "previdenciario"
    assert proactive_policy.lead_area(fields, "Setor") == ""


def test_eligibility_by_area() -> None:
    proactive_policy.check_eligible("previdenciario", "Ana", [])  # no areas = every area
    proactive_policy.check_eligible("previdenciario", "Ana", ["previdenciario", "trabalhista"])
    with pytest.raises(Conflict, match="Ana serves only trabalhista"):
        proactive_policy.check_eligible("previdenciario", "Ana", ["trabalhista"])
    with pytest.raises(Conflict, match="no area"):
        proactive_policy.check_eligible("", "Ana", ["trabalhista"])


def test_templates_are_checked_and_filled_in() -> None:
    text = proactive_policy.render(
        proactive_policy.DEFAULT_TEMPLATES["form"], "Maria Souza", "L", "Bruno"
    )
    assert text.startswith("Olá, Maria! Aqui é Bruno")
    with pytest.raises(InvalidInput, match="unknown placeholder"):
        proactive_policy.check_template("Olá {cliente}")
    with pytest.raises(InvalidInput, match="trigger"):
        proactive_policy.check_trigger("Formulário Novo")
