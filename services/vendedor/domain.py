"""Merging Kommo users into the vendedores. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Vendedor:
    id: int
    name: str
    email: str = ""
    phone: str = ""
    areas: list[str] = field(default_factory=list)
    source: str = "kommo"
    active: bool = True
    is_admin: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SyncResult:
    vendedores: dict[int, Vendedor]
    added: int
    updated: int
    deactivated: int


def merge_kommo_users(existing: dict[int, Vendedor], users: list[Vendedor]) -> SyncResult:
    """Kommo is the truth for its users' identity; areas are ours and are kept.

    A user gone from Kommo is deactivated, not deleted: its history stays.
    """
    merged = dict(existing)
    added = updated = deactivated = 0
    seen = set()
    for user in users:
        seen.add(user.id)
        old = existing.get(user.id)
        if old is None:
            merged[user.id] = user
            added += 1
            continue
        new = replace(user, areas=old.areas, phone=old.phone or user.phone)
        if new != old:
            merged[user.id] = new
            updated += 1
    for vendedor_id, old in existing.items():
        if old.source == "kommo" and vendedor_id not in seen and old.active:
            merged[vendedor_id] = replace(old, active=False)
            deactivated += 1
    return SyncResult(merged, added, updated, deactivated)
