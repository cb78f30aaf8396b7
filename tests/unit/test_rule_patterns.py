"""The bot rules' trigger patterns are matched by RE2 (issue 19, item 8): no pattern can
stall the conversation service, whatever a customer writes, and a pattern still matches
what Python's `re` would match."""

from __future__ import annotations

import json
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.conversation import patterns
from services.conversation.patterns import compile_pattern
from services.conversation.rulebook import parse_rules

# Bounded repeats over the same characters compete like open ones: Python's `re` takes
# ages on a text of letters without the "!" (the issue's own pattern is the first).
COMPETING_BOUNDED = [
    r"\w{0,32}\w{0,32}\w{0,32}\w{0,32}!",
    r"[a-z]{0,32}[a-z]{0,32}[a-z]{0,32}[a-z]{0,32}!",
    r"[^!]{0,30}" * 9 + "!",
]
ADVERSARIAL = ["a" * 4096, "é" * 4096, "中" * 4096, "a " * 2048]


def refusal(pattern: str, scope: str = "account") -> str:
    """The message PUT /bot-rules answers 400 with (InvalidInput)."""
    rule_set = {"trigger": "regex", "pattern": pattern}
    document = {"account": rule_set} if scope == "account" else {"stages": {"71000002": rule_set}}
    with pytest.raises(InvalidInput) as refused:
        parse_rules(json.dumps(document))
    return str(refused.value)


@pytest.mark.parametrize("pattern", COMPETING_BOUNDED)
def test_competing_bounded_repeats_are_refused_or_matched_by_re2(pattern: str) -> None:
    try:
        compiled = compile_pattern(pattern)
    except ValueError as exc:
        # Refused when the rules are written, naming the field.
        assert f"account.pattern: {exc}" in refusal(pattern)
        return
    assert type(compiled.regex).__module__ == "re2"  # never Python's backtracking `re`
    for text in ADVERSARIAL:  # each done in milliseconds (pytest's timeout is the bound)
        assert compiled.search(text) is False
        assert compiled.search(text[:-1] + "!") is True


def test_the_issues_pattern_is_refused_as_too_large() -> None:
    # RE2 writes \w (every letter of Unicode) out 128 times: more memory than a pattern
    # may take. The same shape over [a-z] is small and accepted (above).
    message = refusal(r"\w{0,32}\w{0,32}\w{0,32}\w{0,32}!")
    assert message.startswith("bot rules: account.pattern: the pattern is too large")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(a)?(?(1)b|c)", "backreference"),
        (r"(?=a)b", "lookahead or lookbehind"),
        (r"a(?!b)", "lookahead or lookbehind"),
        (r"(?<=a)b", "lookahead or lookbehind"),
        (r"(?<!a)b", "lookahead or lookbehind"),
        (r"(?>ab)c", "atomic group or a possessive quantifier"),
        (r"a*+b", "atomic group or a possessive quantifier"),
        (r"[^!]{0,999}!", "at most 300 are allowed"),
        (r"(?:ab){200}", "at most 300 are allowed"),
        (r"\bx*", "uses \\b or \\B where"),
        (r"(\bsim)+", "uses \\b or \\B where"),
    ],
)
@pytest.mark.parametrize("scope", ["account", "stage"])
def test_what_re2_cannot_match_is_refused_naming_the_field(
    pattern: str, why: str, scope: str
) -> None:
    message = refusal(pattern, scope)
    field = "account.pattern" if scope == "account" else "stages.71000002.pattern"
    assert message.startswith(f"bot rules: {field}: the pattern ")
    assert why in message


# Patterns the rules accept, and texts around them: RE2 must say what `re` says.
FAITHFUL = [
    r"\bvalor\b",
    r"\b(pre[cç]o|valor|quanto custa)\b",
    r"^(oi|ol[aá])\b",
    r"\bvocê\b",
    r"\bé\b|\bÉ\b",
    r"(\bsim\b|\bnão\b)",
    r"\Bção\b",
    r"é\B",
    r"x\b",
    r"(?:\bok)?x",
    r"foo\b bar",
    r"\b\d+\s*reais\b",
    r"\d{3}\.?\d{3}\.?\d{3}-?\d{2}",
    r"quero.*comprar",
    r".*quero.*",
    r"\w+@\w+\.com",
    r"(foo|foobar)+",
    r"(?:bom dia|boa tarde|boa noite)+",
    r"(\w\s?)+$",
    r"^oi$",
    r"oi$\s*",
    r"(?m)^b$",
    r"\Aa\Z",
    r"(?-i:Oi) x",
    r"(?s)a.b",
    r"a.b",
    r"(?a)\bx\b",
    r"(?a)\w\s",
    r"[^\W\d]+x",
    r"\S+ \S+",
    r"[\s\d]x",
    r"[^\s]é",
    r"straße|ſ|K",
    r"[a-zà-ú]{2,5}!",
    r"[{}\[\]^$.|?*+()\\-]",
]
WORDS = ["ção", "valor", "você", "preço", "oi", "Oi", "sim", "não", "foo", "bar", "reais"]
PIECES = [
    *"aAbxéÉçÇoOiIkKſs \n!._-0123456789٣\u00a0\t{}[]^$|?*+()\\@\U0001f600",
    *WORDS,
    *[".com", "quero", "comprar", "ok", "bom dia"],
]


@pytest.mark.parametrize("pattern", FAITHFUL)
@settings(max_examples=150, deadline=None)
@given(text=st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_re2_matches_what_pythons_re_matches(pattern: str, text: str) -> None:
    expected = re.search(pattern, text, re.IGNORECASE) is not None
    assert compile_pattern(pattern).search(text) is expected


@pytest.mark.parametrize("category", [r"\w", r"\W", r"\d", r"\D", r"\s", r"\S"])
def test_classes_are_pythons_unicode_classes(category: str) -> None:
    """RE2's own \\w, \\d, \\s are ASCII: Portuguese letters would not be letters."""
    compiled, python = compile_pattern(category), re.compile(category)
    sample = [*range(0x3100), *range(0xFF00, 0xFFFF), 0x1F600, 0x1D7CE, sys.maxunicode]
    for code in sample:
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        assert compiled.search(char) is (python.search(char) is not None), hex(code)


def test_a_word_ending_in_an_accent_is_a_whole_word() -> None:
    # RE2's \b is ASCII: "ê" would not count as a letter and \bvocê\b would never match.
    assert compile_pattern(r"\bvocê\b").search("e você?") is True
    assert compile_pattern(r"\bvocê\b").search("vocês") is False
    assert compile_pattern(r"\bpreço\b").search("o preçoxyz") is False


def test_a_text_re2_cannot_encode_is_still_matched() -> None:
    assert compile_pattern("valor").search("valor \ud800") is True


def test_patterns_are_compiled_once_and_bounded() -> None:
    pattern = r"\bvalor\b"
    assert compile_pattern(pattern) is compile_pattern(pattern)
    assert compile_pattern(pattern).regex.options.max_mem == patterns.MAX_PATTERN_MEMORY
