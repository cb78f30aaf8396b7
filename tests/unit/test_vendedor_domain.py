"""Merging Kommo users into the vendedores."""

from __future__ import annotations

from services.vendedor.domain import Vendedor, merge_kommo_users


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
