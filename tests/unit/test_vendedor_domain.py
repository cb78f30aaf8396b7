"""Merging Kommo users into the vendedores."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidInput
from services.vendedor.domain import (
    Vendedor,
    dynamic,
    fallback_policy,
    merge_kommo_users,
    new_custom,
    normalize_area,
)


def test_sync_adds_updates_and_deactivates_but_keeps_areas_and_history() -> None:
    existing = {
        1: Vendedor(1, "Ana", "ana@x", areas=["previdenciario"]),
        2: Vendedor(2, "Bruno", "bruno@x"),
        3: Vendedor(3, "Custom", source="custom"),
    }
    users = [Vendedor(1, "Ana Beatriz", "ana@x"), Vendedor(4, "Diego", "diego@x")]
    result = merge_kommo_users(existing, users)
    assert (result.added, result.updated, result.deactivated) == (1, 1, 1)
    assert result.vendedores[1].name == "Ana Beatriz"
    assert result.vendedores[1].areas == ["previdenciario"]
    assert result.vendedores[2].active is False
    assert result.vendedores[3] == existing[3]
    assert result.vendedores[4].source == "kommo"


def test_a_second_identical_sync_changes_nothing() -> None:
    first = merge_kommo_users({}, [Vendedor(1, "Ana")])
    again = merge_kommo_users(first.vendedores, [Vendedor(1, "Ana")])
    assert (again.added, again.updated, again.deactivated) == (0, 0, 0)


def test_areas_are_compared_without_accents_case_or_spaces() -> None:
    assert normalize_area(" Previdenciário ") == "previdenciario"
    assert normalize_area("BPC LOAS") == "bpc-loas"
    vendedor = Vendedor(1, "Ana", areas=["previdenciario"])
    assert vendedor.serves("Previdenciário")
    assert not vendedor.serves("trabalhista")
    assert Vendedor(2, "Bruno").serves("qualquer"), "no areas = every area"


def test_a_custom_vendedor_needs_a_name_and_a_way_to_be_reached() -> None:
    with pytest.raises(InvalidInput, match="name is required"):
        new_custom(1, " ", "a@b.co", "", [], True)
    with pytest.raises(InvalidInput, match="an email or a phone"):
        new_custom(1, "Ana", "", "", [], True)
    with pytest.raises(InvalidInput, match="not an email"):
        new_custom(1, "Ana", "ana-at-example", "", [], True)
    with pytest.raises(InvalidInput, match="phone"):
        new_custom(1, "Ana", "", "12", [], True)
    made = new_custom(7, " Ana ", "", "(11) 91234-5678", ["Trabalhista", "trabalhista"], True)
    assert (made.name, made.phone, made.areas, made.source) == (
        "Ana",
        "+5511912345678",
        ["trabalhista"],
        "custom",
    )


def test_the_dynamic_list_lets_the_real_vendedor_win_a_conflict() -> None:
    real = Vendedor(1, "Ana (Kommo)", "ana@x.com")
    twin = Vendedor(9_000_000_001, "Ana (custom)", "ANA@x.com", source="custom")
    other = Vendedor(9_000_000_002, "Carlos", "carlos@x.com", source="custom")
    assert dynamic([real, twin, other]) == [real, other]


def test_fallback_policies() -> None:
    assert fallback_policy("none") == ("none", 0)
    assert fallback_policy("round_robin") == ("round_robin", 0)
    assert fallback_policy("10000002") == ("default", 10000002)
    with pytest.raises(ValueError, match="round_robin"):
        fallback_policy("sometimes")
