"""Regular expressions users give the bot rules (a trigger's `pattern`), bounded.

A pattern is matched by RE2, whose time grows linearly with the text whatever the
pattern: a pattern cannot stall the service however a message is written. It is still
written (and checked) in Python's syntax and matches as Python's `re` would (Unicode
\\w, \\d, \\s and \\b, case-insensitive): the parsed pattern is translated into RE2's
syntax. What RE2 cannot express (backreferences, lookarounds, atomic groups, possessive
quantifiers) is refused, and so are a pattern whose compiled program would be large or
slow to run (MAX_PATTERN_MEMORY, MAX_WRITTEN_OUT) and a \\b whose neighbours cannot be
told (see pattern_re2.py).

The shapes that take a backtracking engine (Python's `re`) exponential or high-polynomial
time are still refused, as the rules have always said, so that a pattern the bridge
accepts is safe with such an engine too (pattern_check.py). Both read the parsed
pattern; a node they do not know is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

from services.conversation.pattern_check import REPEATS, PatternCheck, sre
from services.conversation.pattern_re2 import Translation

MAX_PATTERN_CHARS = 300

_FLAGS = re.IGNORECASE  # customers type in any case; (?-i:…) opts out

# What one compiled pattern may hold in memory (its program and RE2's cache of automaton
# states), which also bounds its program: about 50,000 instructions. A \w alone is 1,300
# of them (every letter of Unicode), so \w{0,32} fits and four of it in a row do not.
MAX_PATTERN_MEMORY = 1 << 20
# RE2 writes counted repeats out (x{0,3} is x?x?x?: three states). Matching runs through
# RE2's automaton of states, fast while it fits the memory above and otherwise at a cost
# that grows with the number of states: a pattern that is at most this long written out
# matches a 4,096-character text within ~50 ms whatever the text (measured on one core
# of the 2-core box; [^!]{0,999}! takes ~200 ms). The same bound as the pattern's own
# length, so a pattern without counted repeats always fits.
MAX_WRITTEN_OUT = MAX_PATTERN_CHARS

TOO_LARGE = (
    "is too large once compiled: counted repeats multiply it, \\w{0,32} four times in a "
    "row is already too much; use fewer or shorter ones (\\w+ costs one \\w)"
)
LONG_REPEATS = (
    "is {} characters long with its counted repeats written out (x{{2,4}} counts as "
    "xxxx); at most {} are allowed: use + or * rather than a large count, e.g. [^!]+ "
    "instead of [^!]{{0,500}}"
)


def _written_out(items: Iterable[tuple[Any, Any]]) -> int:
    """How many characters the pattern names once its counted repeats are written out:
    about the number of states RE2's automaton has."""
    total = 0
    for op, av in items:
        if op in REPEATS:
            low, high, body = av
            total += (max(low, 1) if high == sre.MAXREPEAT else high) * _written_out(body)
        elif op is sre.BRANCH:
            total += sum(_written_out(alt) for alt in av[1])
        elif op is sre.SUBPATTERN:
            total += _written_out(av[3])
        elif op is not sre.AT:
            total += 1
    return total


@dataclass(frozen=True, slots=True, eq=False)
class RulePattern:
    """A trigger's pattern, ready to match: `search` says whether a text holds a match."""

    source: str  # as written in the rules
    regex: Any  # the RE2 program (re2._Regexp)

    def search(self, text: str) -> bool:
        try:
            return self.regex.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: RE2 reads UTF-8
            return self.regex.search(text.encode("utf-8", "replace").decode()) is not None


def _re2_options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PATTERN_MEMORY
    options.log_errors = False  # refusals are reported to whoever wrote the pattern
    options.never_capture = True
    return options


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> RulePattern:
    """A trigger's pattern, compiled case-insensitively for RE2, or ValueError saying why it
    is refused: too long, not a regular expression, a construct RE2 cannot express, a shape
    that makes backtracking engines hang, or too large once compiled."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"the pattern has {len(pattern)} characters; at most {MAX_PATTERN_CHARS} are allowed"
        )
    try:
        parsed = sre.parse(pattern, _FLAGS)
    except re.error as exc:
        raise ValueError(f"the pattern is not a regular expression: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("the pattern nests too deeply") from exc
    try:
        check = PatternCheck(parsed)
        check.run()
        if (written_out := _written_out(parsed)) > MAX_WRITTEN_OUT:
            raise ValueError(LONG_REPEATS.format(written_out, MAX_WRITTEN_OUT))
        expression = Translation(check).run()
    except ValueError as exc:
        raise ValueError(f"the pattern {exc}") from exc
    except RecursionError as exc:
        raise ValueError("the pattern nests too deeply") from exc
    try:
        regex = re2.compile(expression, _re2_options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        if "too large" in str(reason):
            raise ValueError(f"the pattern {TOO_LARGE}") from None
        raise ValueError(f"the pattern cannot be matched safely: {reason}") from None
    return RulePattern(pattern, regex)
