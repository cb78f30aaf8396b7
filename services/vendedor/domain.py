"""The vendedores' rules: merging Kommo users, the dynamic list, custom vendedores,
areas and the fallback for leads without a vendedor. Plain data, no I/O."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import phonenumbers

from services.common.errors import InvalidInput

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_AREAS = 50
# Brazilian numbers may be written without the country code.
_DEFAULT_REGION = "BR"


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

    def serves(self, area: str) -> bool:
        """No areas configured = serves every area."""
        return not self.areas or normalize_area(area) in self.areas


@dataclass(frozen=True, slots=True)
class SyncResult:
    vendedores: dict[int, Vendedor]
    added: int
    updated: int
    deactivated: int


def normalize_area(area: str) -> str:
    """`Previdenciário` and `previdenciario ` are the same area."""
    decomposed = unicodedata.normalize("NFKD", area)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s_]+", "-", plain.strip().lower())


def normalize_areas(areas: list[str]) -> list[str]:
    if len(areas) > _MAX_AREAS:
        raise InvalidInput(f"at most {_MAX_AREAS} areas")
    cleaned = [normalize_area(a) for a in areas]
    if any(not a for a in cleaned):
        raise InvalidInput("an area cannot be empty")
    return sorted(set(cleaned))


def normalize_phone(phone: str) -> str:
    """E.164, or an InvalidInput saying what is wrong."""
    try:
        parsed = phonenumbers.parse(phone, _DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput(f"phone is not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidInput("phone is not a valid number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def new_custom(
    vendedor_id: int, name: str, email: str, phone: str, areas: list[str], active: bool
) -> Vendedor:
    name = name.strip()
    email = email.strip().lower()
    if not name:
        raise InvalidInput("name is required")
    if not email and not phone.strip():
        raise InvalidInput("an email or a phone is required, so the vendedor can be reached")
    if email and not _EMAIL.match(email):
        raise InvalidInput(f"email {email!r} is not an email address")
    return Vendedor(
        id=vendedor_id,
        name=name,
        email=email,
        phone=normalize_phone(phone) if phone.strip() else "",
        areas=normalize_areas(areas),
        source="custom",
        active=active,
    )


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
            if old.active and not new.active:
                deactivated += 1
            else:
                updated += 1
    for vendedor_id, old in existing.items():
        if old.source == "kommo" and vendedor_id not in seen and old.active:
            merged[vendedor_id] = replace(old, active=False)
            deactivated += 1
    return SyncResult(merged, added, updated, deactivated)


def dynamic(vendedores: list[Vendedor]) -> list[Vendedor]:
    """Real and custom together; a custom one that is also a Kommo user (same email)
    gives way to the real one."""
    real_emails = {v.email.lower() for v in vendedores if v.source == "kommo" and v.email}
    return [
        v
        for v in vendedores
        if v.source == "kommo" or not v.email or v.email.lower() not in real_emails
    ]


def fallback_policy(setting: str) -> tuple[str, int]:
    """`none`, `round_robin`, or a vendedor id (the default vendedor)."""
    value = setting.strip().lower()
    if value in ("", "none"):
        return "none", 0
    if value == "round_robin":
        return "round_robin", 0
    if value.isdigit():
        return "default", int(value)
    raise ValueError("must be none, round_robin or a vendedor id")


# The three sample vendedores of the original system, for demos (opt-in: they are not
# real people and must not be mixed into a real account by accident).
SAMPLES = [
    ("Carlos Mendes (exemplo)", "carlos.exemplo@example.com", ["previdenciario"]),
    ("Patrícia Lima (exemplo)", "patricia.exemplo@example.com", ["trabalhista"]),
    ("Rafael Costa (exemplo)", "rafael.exemplo@example.com", ["previdenciario", "bpc-loas"]),
]


def replace_id(vendedor: Vendedor, vendedor_id: int) -> Vendedor:
    return replace(vendedor, id=vendedor_id)


def with_areas(vendedor: Vendedor, areas: list[str]) -> Vendedor:
    return replace(vendedor, areas=areas)
