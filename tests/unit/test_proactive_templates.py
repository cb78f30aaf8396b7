"""Proactive message templates (issue 19, item 10): only {nome}, {lead} and {vendedor} as
they are; never str.format on what a PUT stored ("{nome:>999999999}" built a gigabyte)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.conversation import proactive_policy


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("Oi {nome:>999999999}", "placeholder {nome:>999999999}: a format spec"),
        ("Oi {nome:}", "placeholder {nome:}: a format spec"),
        ("Oi {vendedor:.3}", "a format spec"),
        ("Oi {nome!r}", "placeholder {nome!r}: a conversion"),
        ("Oi {nome!s:>5}", "a conversion"),
        ("Oi {nome.upper}", "placeholder {nome.upper}: attribute or index access"),
        ("Oi {nome[0]}", "attribute or index access"),
        ("Oi {nome.__class__}", "attribute or index access"),
        ("Oi {}", "placeholder {}: a positional field"),
        ("Oi {0}", "placeholder {0}: a positional field"),
        ("Oi {cliente}", "placeholder {cliente}: unknown placeholder"),
        ("Oi { nome }", "unknown placeholder"),
        ("Oi {nome", "a lone '{' at character 4: write {{"),
        ("Oi nome}", "a lone '}' at character 8: write }}"),
        ("Oi {nome:{vendedor}}", "a lone '{' at character 4"),
    ],
)
def test_only_bare_known_placeholders_are_accepted(template: str, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        proactive_policy.check_template(template)
    message = str(refused.value)
    assert why in message
    assert "{nome}, {lead}, {vendedor}" in message


@pytest.mark.parametrize(
    "template",
    [
        *proactive_policy.DEFAULT_TEMPLATES.values(),
        "Oi {nome}, {vendedor} aqui sobre {lead}",
        "Chaves: {{assim}} e }} e {{",
        "{{{nome}}}",
        "sem placeholder",
    ],
)
def test_templates_with_bare_placeholders_and_doubled_braces_are_accepted(template: str) -> None:
    assert proactive_policy.check_template(template) == template


def test_rendering_fills_placeholders_and_braces_as_str_format_did() -> None:
    text = proactive_policy.render("{{{nome}}} de {lead}, {vendedor}", "Maria Souza", "L1", "")
    assert text == "{Maria} de L1, a equipe"


def test_templates_stored_before_the_check_render_without_str_format() -> None:
    # Accepted by the old check (a known name), stored in Redis: the spec is ignored.
    assert proactive_policy.render("Oi {nome:>999999999}", "Ana", "L", "B") == "Oi Ana"
    assert (
        proactive_policy.render("Oi {nome!r}, {vendedor:^9000000000}", "Ana", "L", "B")
        == "Oi Ana, B"
    )
    # Anything else in braces stays as written instead of failing the start.
    assert proactive_policy.render("Oi {cliente} {0} {nome.x} {", "Ana", "L", "B") == (
        "Oi {cliente} {0} {nome.x} {"
    )


def test_values_are_not_read_as_templates() -> None:
    assert proactive_policy.render("Oi {nome}", "{lead}", "L", "B") == "Oi {lead}"


PIECES = ["{", "}", "{{", "}}", "nome", "lead", "vendedor", "x", " ", ":", "!r", ".", "[0]", "0"]


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_an_accepted_template_renders_as_str_format_would(template: str) -> None:
    try:
        proactive_policy.check_template(template)
    except InvalidInput:
        return
    values = {"nome": "Ana", "lead": "L", "vendedor": "B"}
    assert proactive_policy.render(template, "Ana Souza", "L", "B") == template.format(**values)
