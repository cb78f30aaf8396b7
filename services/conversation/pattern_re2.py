"""A trigger's pattern in RE2's syntax: once parsed and checked (pattern_check.py), the
pattern is written out again for RE2, so that RE2 matches what Python's `re` would (Unicode
\\w, \\d, \\s and \\b, case-insensitive; see `Translation`). A \\b whose neighbours
cannot be told is refused (UNCLEAR_BOUNDARY).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from services.conversation.pattern_check import NOT_CATEGORIES, REPEATS, PatternCheck, sre

UNCLEAR_BOUNDARY = (
    "uses \\b or \\B where it cannot be told whether the characters on both sides are "
    "letters: put it between a letter, digit or space and the start or end of the "
    "pattern, like \\bpreço\\b or ^oi\\b"
)

# What a zero-width \b sees on one side: a word character (letters, digits, _), another
# character (or the start or end of the text), the edge of the whole match (the text
# around it is unknown, so it can be read as one more character), or it cannot be told.
_WORD, _OTHER, _EDGE, _UNKNOWN = "word", "other", "edge", "unknown"

_NEVER = "[^\\x{0}-\\x{10ffff}]"  # matches no character


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


# Python's ASCII \w, \d, \s (the (?a) flag); \s is not str.isspace's ASCII part.
_ASCII_TESTS: dict[Any, Callable[[str], bool]] = {
    sre.CATEGORY_DIGIT: lambda c: "0" <= c <= "9",
    sre.CATEGORY_SPACE: lambda c: c in " \t\n\r\f\v",
    sre.CATEGORY_WORD: lambda c: c.isascii() and _is_word(c),
}
_UNICODE_TESTS: dict[Any, Callable[[str], bool]] = {
    sre.CATEGORY_DIGIT: str.isdecimal,
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_WORD: _is_word,
}


def _char(code: int) -> str:
    """One character in RE2's syntax, inside or outside a class."""
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


@lru_cache(maxsize=16)
def _category(category: Any, ascii_only: bool) -> str:
    """The code points of \\w, \\d, \\s or their opposites as Python's `re` reads them, as
    the inside of an RE2 class. RE2's own \\w, \\d, \\s and \\p{…} are ASCII or another
    Unicode version; these are computed once from the running Python (~0.1 s for \\w)."""
    tests = _ASCII_TESTS if ascii_only else _UNICODE_TESTS
    negated = category in NOT_CATEGORIES
    test = tests[NOT_CATEGORIES[category] if negated else category]
    ranges: list[str] = []
    start = -1
    for code in range(sys.maxunicode + 2):
        inside = code <= sys.maxunicode and test(chr(code)) != negated
        if inside and start < 0:
            start = code
        elif not inside and start >= 0:
            last = code - 1
            ranges.append(_char(start) if start == last else f"{_char(start)}-{_char(last)}")
            start = -1
    return "".join(ranges)


class Translation:
    """The parsed pattern in RE2's syntax, matching what Python's `re` would match.

    Groups become non-capturing (only whether a text matches counts), flags are carried
    over, \\w \\d \\s become explicit code-point classes, and `$` keeps Python's meaning
    (also before a final line break). Python's \\b is Unicode and RE2's is ASCII (RE2 has no
    lookaround to build one), so a Unicode \\b is written from what surrounds it: between
    a letter and a space it always holds and disappears; at the start or end of the
    match, beside a letter, it becomes one more character that is not a letter (or the
    start or end of the text), which changes where a match lies but never whether there
    is one. Elsewhere it is refused."""

    def __init__(self, check: PatternCheck) -> None:
        self.check = check
        self.word = frozenset(c for c in check.universe if _is_word(chr(c)))

    def run(self) -> str:
        flags = self.check.parsed.state.flags  # holds re.IGNORECASE: patterns._FLAGS
        inline = "".join(letter for bit, letter in _INLINE_FLAGS if flags & bit)
        body = self._sequence(list(self.check.parsed), flags, _EDGE, _EDGE, at_end=True)
        return f"(?{inline}){body}" if inline else body

    # -- emitting ----------------------------------------------------------------------

    def _sequence(
        self, items: list[tuple[Any, Any]], flags: int, before: str, after: str, at_end: bool
    ) -> str:
        """`before`/`after`: what lies beyond the sequence on each side; `at_end`: what
        follows it in the pattern can match nothing."""
        out = []
        for index, (op, av) in enumerate(items):
            last = at_end and all(self.check._item(*node).nullable for node in items[index + 1 :])
            if op is sre.AT:
                out.append(self._at(av, flags, items, index, before, after, last))
            elif op is sre.SUBPATTERN:
                _, add, remove, body = av
                inner = (flags | add) & ~remove
                around = (
                    self._kind(items[:index], True, before),
                    self._kind(items[index + 1 :], False, after),
                )
                text = self._sequence(list(body), inner, *around, at_end=last)
                on = "".join(letter for bit, letter in _INLINE_FLAGS if add & bit)
                off = "".join(letter for bit, letter in _INLINE_FLAGS if remove & bit)
                out.append(f"(?{on}{'-' + off if off else ''}:{text})")
            elif op is sre.BRANCH:
                around = (
                    self._kind(items[:index], True, before),
                    self._kind(items[index + 1 :], False, after),
                )
                alternatives = [
                    self._sequence(list(alt), flags, *around, at_end=last) for alt in av[1]
                ]
                out.append("(?:" + "|".join(alternatives) + ")")
            elif op in REPEATS:
                out.append(self._repeat(op, av, flags, items, index, before, after, last))
            else:
                out.append(self._one(op, av, flags))
        return "".join(out)

    def _repeat(
        self,
        op: Any,
        av: Any,
        flags: int,
        items: list[tuple[Any, Any]],
        index: int,
        before: str,
        after: str,
        last: bool,
    ) -> str:
        low, high, body = av
        if high > 1:  # one iteration follows another: what lies around the body varies
            text = self._sequence(list(body), flags, _UNKNOWN, _UNKNOWN, at_end=False)
        else:
            around = (
                self._kind(items[:index], True, before),
                self._kind(items[index + 1 :], False, after),
            )
            text = self._sequence(list(body), flags, *around, at_end=last)
        if high == sre.MAXREPEAT:
            count = {0: "*", 1: "+"}.get(low, f"{{{low},}}")
        elif low == high:
            count = f"{{{low}}}"
        else:
            count = "?" if (low, high) == (0, 1) else f"{{{low},{high}}}"
        lazy = "?" if op is sre.MIN_REPEAT else ""
        return f"(?:{text}){count}{lazy}"

    def _one(self, op: Any, av: Any, flags: int) -> str:
        if op is sre.LITERAL:
            return _char(av)
        if op is sre.NOT_LITERAL:
            return f"[^{_char(av)}]"
        if op is sre.ANY:
            return "."  # without (?s) not a line break, as in Python
        if op is sre.IN:
            return self._class(av, flags)
        raise ValueError(f"uses a construct the bridge cannot match ({op})")

    def _class(self, items: list[tuple[Any, Any]], flags: int) -> str:
        ascii_only = bool(flags & re.ASCII)
        negate = False
        parts: list[str] = []
        categories_only = True
        for kind, value in items:
            if kind is sre.NEGATE:
                negate = True
            elif kind is sre.CATEGORY and (value in _UNICODE_TESTS or value in NOT_CATEGORIES):
                parts.append(_category(value, ascii_only))
            elif kind is sre.LITERAL:
                parts.append(_char(value))
                categories_only = False
            elif kind is sre.RANGE:
                parts.append(f"{_char(value[0])}-{_char(value[1])}")
                categories_only = False
            else:
                raise ValueError(f"uses a character class the bridge cannot match ({kind})")
        written = f"[{'^' if negate else ''}{''.join(parts)}]"
        # Python never folds the case of \w \d \s; RE2's (?i) would, and take U+0345 (a
        # combining mark) for a letter, as it folds to ι. In a class that also names
        # characters it still does: that one character is the whole difference.
        return f"(?-i:{written})" if categories_only else written

    def _at(
        self,
        code: Any,
        flags: int,
        items: list[tuple[Any, Any]],
        index: int,
        before: str,
        after: str,
        last: bool,
    ) -> str:
        multiline = bool(flags & re.MULTILINE)
        if code is sre.AT_BEGINNING:
            return "^"  # RE2's, like Python's, is the start of a line with (?m)
        if code is sre.AT_BEGINNING_STRING:
            return "\\A"
        if code is sre.AT_END_STRING:
            return "\\z"
        if code is sre.AT_END:
            if multiline:
                return "$"
            # Python's $ also holds before a final line break. When what follows can match
            # nothing, taking that line break changes nothing; otherwise the very end.
            return "(?:\\n?\\z)" if last else "\\z"
        if code in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            if flags & re.ASCII:
                return "\\b" if code is sre.AT_BOUNDARY else "\\B"
            return self._boundary(
                code is sre.AT_NON_BOUNDARY,
                self._kind(items[:index], True, before),
                self._kind(items[index + 1 :], False, after),
            )
        raise ValueError(f"uses an anchor the bridge cannot match ({code})")

    def _boundary(self, negated: bool, before: str, after: str) -> str:
        word = _category(sre.CATEGORY_WORD, False)
        known = (_WORD, _OTHER)
        if before in known and after in known:
            return "" if (before != after) != negated else _NEVER
        if before == _EDGE and after in known:
            wanted = (after == _OTHER) != negated  # the character before must be a letter
            return f"(?-i:[{word}])" if wanted else f"(?-i:\\A|[^{word}])"
        if after == _EDGE and before in known:
            wanted = (before == _OTHER) != negated
            return f"(?-i:[{word}])" if wanted else f"(?-i:\\z|[^{word}])"
        raise ValueError(UNCLEAR_BOUNDARY)

    # -- what lies beside a position ---------------------------------------------------

    def _kind(self, items: list[tuple[Any, Any]], backwards: bool, beyond: str) -> str:
        """What character is next to the edge of `items`, read from that edge inwards
        (`backwards`: from the end, for what comes before a position); `beyond` is what
        lies past the other edge, reached when everything in `items` can match nothing."""
        walk = list(reversed(items)) if backwards else list(items)
        return self._walk(walk, 0, backwards, beyond)

    def _walk(self, walk: list[tuple[Any, Any]], at: int, backwards: bool, beyond: str) -> str:
        if at == len(walk):
            return beyond
        op, av = walk[at]

        def rest() -> str:
            return self._walk(walk, at + 1, backwards, beyond)

        if op is sre.AT:
            starts = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
            ends = (sre.AT_END, sre.AT_END_STRING)
            # The start of the text (or of a line: after a line break) is not a letter.
            return _OTHER if av in (starts if backwards else ends) else _UNKNOWN
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            chars = self.check._one_char(op, av)
            if chars and chars <= self.word:
                return _WORD
            return _OTHER if chars and not chars & self.word else _UNKNOWN
        if op is sre.SUBPATTERN:
            return self._kind(list(av[3]), backwards, rest())
        if op is sre.BRANCH:
            after = rest()
            kinds = {self._kind(list(alt), backwards, after) for alt in av[1]}
            return kinds.pop() if len(kinds) == 1 else _UNKNOWN
        if op in REPEATS:
            low, _, body = av
            after = rest()
            inner = self._kind(list(body), backwards, after)
            return inner if low > 0 or inner == after else _UNKNOWN
        return _UNKNOWN


_INLINE_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))
