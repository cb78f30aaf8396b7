"""Proactive conversations: working hours, eligibility by area, message templates.
Plain data, no I/O."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.common.errors import Conflict, InvalidInput

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_TRIGGER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")

# pt-BR first messages per trigger; {nome}, {lead}, {vendedor} are filled in. Edited
# without code through PROACTIVE_TEMPLATES_FILE or PUT /proactive/templates/{trigger}.
# A trigger is one of these names: a start for a trigger without a template is refused
# ("default" is a trigger like the others, for a start with no particular reason).
DEFAULT_TEMPLATES = {
    "form": "Olá, {nome}! Aqui é {vendedor}, da Previdas. Recebemos o seu formulário e "
    "gostaria de entender melhor o seu caso. Podemos conversar por aqui?",
    "download": "Olá, {nome}! Aqui é {vendedor}, da Previdas. Vi que você baixou o nosso "
    "material. Ficou alguma dúvida que eu possa esclarecer?",
    "agendamento": "Olá, {nome}! Aqui é {vendedor}, da Previdas. Recebemos o seu pedido de "
    "agendamento e já vamos confirmar o melhor horário com você.",
    "default": "Olá, {nome}! Aqui é {vendedor}, da Previdas. Como posso ajudar?",
}
PLACEHOLDERS = ("nome", "lead", "vendedor")


def check_trigger(trigger: str) -> str:
    if not _TRIGGER.match(trigger):
        raise InvalidInput(
            "trigger must be a short lowercase name (form, download, agendamento, …)"
        )
    return trigger


# A template's braces: "{{" and "}}" (a brace), a placeholder "{…}", or a lone brace.
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PLACEHOLDER_NAMES = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)


def _placeholder_problem(inside: str) -> str | None:
    """What is wrong with a placeholder "{inside}", or None for one of PLACEHOLDERS."""
    name = re.split(r"[!:.\[]", inside, maxsplit=1)[0]
    extra = inside[len(name) :]
    if extra.startswith(":"):
        return "a format spec (':' and what follows) is not allowed"
    if extra.startswith("!"):
        return "a conversion ('!r', '!s', '!a') is not allowed"
    if extra:
        return "attribute or index access ('.' or '[…]') is not allowed"
    if not name.strip() or name.strip().isdigit():
        return "a positional field ({} or {0}) is not allowed: name the placeholder"
    if name not in PLACEHOLDERS:
        return "unknown placeholder"
    return None


def check_template(text: str) -> str:
    """Refuse a template that would fail or misbehave at send time: only the placeholders
    {nome}, {lead} and {vendedor} as they are (no format spec, conversion, attribute or
    index: "{nome:>999999999}" would build a gigabyte), and braces doubled ({{ }})."""
    if not text.strip():
        raise InvalidInput("a template cannot be empty")
    for match in _BRACES.finditer(text):
        token, inside = match.group(), match.group(1)
        if token in ("{{", "}}"):
            continue
        if inside is None:
            raise InvalidInput(
                f"a lone '{token}' at character {match.start() + 1}: write "
                f"{token * 2} for a brace; placeholders are {_PLACEHOLDER_NAMES}"
            )
        problem = _placeholder_problem(inside)
        if problem is not None:
            raise InvalidInput(
                f"placeholder {token[:60]}: {problem}; the placeholders are "
                f"{_PLACEHOLDER_NAMES}, written as they are (and {{{{ }}}} for a brace)"
            )
    return text


def render(template: str, contact_name: str, lead_name: str, vendedor_name: str) -> str:
    """The message: each placeholder replaced by its value, {{ and }} by a brace. Never
    str.format: a template stored before specs were refused ("{nome:>999999999}") gets the
    bare value, and anything else in braces stays as written."""
    first = contact_name.split()[0] if contact_name.strip() else "tudo bem"
    values = {"nome": first, "lead": lead_name, "vendedor": vendedor_name or "a equipe"}

    def fill(match: re.Match[str]) -> str:
        token, inside = match.group(), match.group(1)
        if token in ("{{", "}}"):
            return token[0]
        if inside is None:
            return token
        name = re.split(r"[!:]", inside, maxsplit=1)[0]
        return values.get(name, token)

    return _BRACES.sub(fill, template)


def _plain(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s_]+", "-", plain.strip().lower())


def lead_area(custom_fields: list[Any], field: str) -> str:
    """The lead's area from its custom field, given by name or id; '' if unset."""
    for f in custom_fields:
        if (field.isdigit() and f.field_id == int(field)) or _plain(f.field_name) == _plain(field):
            return _plain(f.values[0]) if f.values else ""
    return ""


def check_eligible(area: str, vendedor_name: str, vendedor_areas: list[str]) -> None:
    """A vendedor with no areas serves every area."""
    if not vendedor_areas:
        return
    if not area:
        raise Conflict(
            f"the lead has no area, and {vendedor_name} serves only {', '.join(vendedor_areas)}"
        )
    if area not in vendedor_areas:
        raise Conflict(
            f"the lead's area is {area}; {vendedor_name} serves only {', '.join(vendedor_areas)}"
        )


@dataclass(frozen=True, slots=True)
class WorkingHours:
    opens: time
    closes: time  # time(0) with `until_midnight` = 24:00
    until_midnight: bool
    days: frozenset[int]  # 0 = Monday
    zone: ZoneInfo

    @classmethod
    def parse(cls, hours: str, days: str, timezone: str) -> WorkingHours:
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", hours)
        if not match:
            raise ValueError("hours must look like 08:00-20:00")
        h1, m1, h2, m2 = (int(x) for x in match.groups())
        if not (h1 < 24 and m1 < 60 and (h2 < 24 or (h2 == 24 and m2 == 0)) and m2 < 60):
            raise ValueError("hours must look like 08:00-20:00")
        chosen: set[int] = set()
        for part in days.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            if first not in _DAYS or (last and last not in _DAYS):
                raise ValueError("days must look like mon-sat or mon,wed,fri")
            a, b = _DAYS.index(first), _DAYS.index(last or first)
            chosen.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        return cls(time(h1, m1), time(h2 % 24, m2), h2 == 24, frozenset(chosen), ZoneInfo(timezone))

    def _open_at(self, local: datetime) -> bool:
        if local.weekday() not in self.days:
            return False
        t = local.time()
        return self.opens <= t and (self.until_midnight or t < self.closes)

    def next_open(self, now: datetime) -> datetime:
        """`now` if messages may go out now, else the start of the next window."""
        local = now.astimezone(self.zone)
        if self._open_at(local):
            return now
        for offset in range(8):
            day = (local + timedelta(days=offset)).date()
            start = datetime.combine(day, self.opens, tzinfo=self.zone)
            if start > local and self._open_at(start):
                return start
        raise ValueError("no working hours configured")
