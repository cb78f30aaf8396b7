"""Regular expressions users give the bot rules (a trigger's `pattern`), bounded.

A pattern is matched by RE2, whose time grows linearly with the text whatever the
pattern: a pattern cannot stall the service however a message is written. It is still
written (and checked) in Python's syntax and matches as Python's `re` would (Unicode
\\w, \\d, \\s and \\b, case-insensitive): the parsed pattern is translated into RE2's
syntax. What RE2 cannot express (backreferences, lookarounds, atomic groups, possessive
quantifiers) is refused, and so are a pattern whose compiled program would be large or
slow to run (MAX_PATTERN_MEMORY, MAX_WRITTEN_OUT) and a \\b whose neighbours cannot be
told (see _Translation).

The shapes that take a backtracking engine (Python's `re`) exponential or high-polynomial
time are still refused, as the rules have always said, so that a pattern the bridge
accepts is safe with such an engine too. Both read the parsed pattern (`re._parser` is
private but has been stable since Python 3.11; before, `sre_parse`); a node they do not
know is refused rather than guessed at.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Any

import re2

MAX_PATTERN_CHARS = 300

_sre: Any = importlib.import_module("re._parser")
_REPEATS = frozenset({_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT})
_KNOWN = frozenset(
    {
        _sre.LITERAL,
        _sre.NOT_LITERAL,
        _sre.ANY,
        _sre.IN,
        _sre.AT,
        _sre.BRANCH,
        _sre.SUBPATTERN,
        _sre.ATOMIC_GROUP,
        *_REPEATS,
    }
)
_FLAGS = re.IGNORECASE  # customers type in any case; (?-i:…) opts out
# A bounded quantifier this wide ({0,100}) backtracks like an open-ended one.
_LONG_REPEAT = 32
# How far two alternatives are compared character by character to see them part.
_PREFIX_CHARS = 16
# The characters overlaps are tested on: Latin-1 (Portuguese needs no more), a few others
# that behave differently (Unicode digits and spaces, case-folding oddities, CJK, emoji),
# and every character the pattern itself names.
_SAMPLE = frozenset(range(256)) | frozenset(
    ord(c) for c in "\u0660\u2003\u2028\u200b\u017f\u212a\u0130\ufb01\u4e2d\U0001f600"
)

NESTED_QUANTIFIER = (
    "repeats a group that holds another quantifier, like (a+)+ or (\\w+\\s?)*: matching can "
    "take forever; write a single class instead, e.g. [\\w\\s]+"
)
EMPTY_REPEAT = "repeats a part that can match nothing, like (a?)*: matching can take forever"
OVERLAPPING_ALTERNATIVES = (
    "repeats a group whose parts can match the same text in more than one way, like "
    "(a|aa)+: matching can take forever"
)
COMPETING_QUANTIFIERS = (
    "has two open-ended quantifiers that can match the same characters, like .*a.*b or "
    "\\w+\\s*\\w+: matching can take seconds; narrow one of them (e.g. [^,]* instead of .*)"
)


# What \d, \s and \w match in a str pattern (Unicode).
_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _sre.CATEGORY_DIGIT: str.isdecimal,
    _sre.CATEGORY_SPACE: str.isspace,
    _sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
}
_NOT_CATEGORIES = {
    _sre.CATEGORY_NOT_DIGIT: _sre.CATEGORY_DIGIT,
    _sre.CATEGORY_NOT_SPACE: _sre.CATEGORY_SPACE,
    _sre.CATEGORY_NOT_WORD: _sre.CATEGORY_WORD,
}


@dataclass(frozen=True, slots=True)
class _Shape:
    first: frozenset[int]  # characters a match can start with
    chars: frozenset[int]  # characters a match can contain
    nullable: bool  # can match the empty string
    open_ended: bool  # holds a quantifier with no useful upper bound


def _flatten(items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
    """A group that is not repeated matches as if its contents stood in its place."""
    for op, av in items:
        if op is _sre.SUBPATTERN:
            yield from _flatten(av[3])
        elif op is _sre.ATOMIC_GROUP:
            yield from _flatten(av)
        else:
            yield op, av


def _children(op: Any, av: Any) -> list[Any]:
    if op is _sre.BRANCH:
        return list(av[1])
    if op is _sre.SUBPATTERN:
        return [av[3]]
    if op is _sre.ATOMIC_GROUP:
        return [av]
    if op in _REPEATS:
        return [av[2]]
    return []


@lru_cache(maxsize=4096)
def _variants(code: int) -> frozenset[int]:
    """The character and its other cases: the pattern is matched case-insensitively."""
    char = chr(code)
    return frozenset({code} | {ord(c) for c in (char.lower(), char.upper()) if len(c) == 1})


class _PatternCheck:
    """The backtracking shapes of one parsed pattern; `run` raises ValueError on one.

    Character sets are sets of code points of a finite universe (`_SAMPLE` and every
    character the pattern names), enough to tell whether two parts can match a common
    character. What a node can match is computed once per node (`_item`)."""

    def __init__(self, parsed: Any) -> None:
        self.parsed = parsed
        named: set[int] = set()
        self._refuse_constructs(parsed, named)
        self.universe = _SAMPLE | frozenset(v for code in named for v in _variants(code))
        self._shapes: dict[tuple[Any, Any], _Shape] = {}
        self._sets: dict[tuple[Any, Any], frozenset[int]] = {}

    def _refuse_constructs(self, items: Any, named: set[int]) -> None:
        for op, av in items:
            if op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
                raise ValueError("uses a backreference (\\1, (?P=name), (?(1)…)); not allowed")
            if op in (_sre.ASSERT, _sre.ASSERT_NOT):
                raise ValueError(
                    "uses a lookahead or lookbehind ((?=…), (?!…), (?<=…), (?<!…)); not allowed"
                )
            if op is _sre.ATOMIC_GROUP or op is _sre.POSSESSIVE_REPEAT:
                raise ValueError(
                    "uses an atomic group or a possessive quantifier ((?>…), a*+, a++); not allowed"
                )
            if op not in _KNOWN:
                raise ValueError(f"uses a construct the bridge cannot check ({op})")
            if op in (_sre.LITERAL, _sre.NOT_LITERAL):
                named.add(av)
            elif op is _sre.IN:
                for kind, value in av:
                    if kind is _sre.LITERAL:
                        named.add(value)
                    elif kind is _sre.RANGE:
                        named.update(value)
            for child in _children(op, av):
                self._refuse_constructs(child, named)

    def run(self) -> None:
        self._check(self.parsed, at_end=True)

    # -- what a node can match ---------------------------------------------------------

    def _class_item(self, kind: Any, value: Any) -> frozenset[int]:
        key = (kind, value)
        if key not in self._sets:
            self._sets[key] = self._class_set(kind, value)
        return self._sets[key]

    def _class_set(self, kind: Any, value: Any) -> frozenset[int]:
        if kind is _sre.LITERAL:
            wanted = _variants(value)
            return frozenset(c for c in self.universe if _variants(c) & wanted)
        if kind is _sre.RANGE:
            low, high = value
            return frozenset(
                c for c in self.universe if any(low <= v <= high for v in _variants(c))
            )
        if kind is _sre.CATEGORY:
            if value in _CATEGORIES:
                test = _CATEGORIES[value]
                return frozenset(c for c in self.universe if test(chr(c)))
            if value in _NOT_CATEGORIES:
                return self.universe - self._class_item(kind, _NOT_CATEGORIES[value])
            return self.universe  # another category: assume it can be anything
        if kind is _sre.NEGATE:
            return frozenset()
        raise ValueError(f"uses a character class the bridge cannot check ({kind})")

    def shape(self, items: Iterable[tuple[Any, Any]]) -> _Shape:
        """What a sequence of nodes can match."""
        first: frozenset[int] = frozenset()
        chars: frozenset[int] = frozenset()
        nullable, open_ended = True, False
        for op, av in items:
            part = self._item(op, av)
            if nullable:
                first |= part.first
            chars |= part.chars
            nullable = nullable and part.nullable
            open_ended = open_ended or part.open_ended
        return _Shape(first, chars, nullable, open_ended)

    def _item(self, op: Any, av: Any) -> _Shape:
        # Nodes are keyed by identity (the parsed tree outlives the check), ints by value.
        key = (op, av if isinstance(av, int) else id(av))
        if key not in self._shapes:
            self._shapes[key] = self._item_shape(op, av)
        return self._shapes[key]

    def _item_shape(self, op: Any, av: Any) -> _Shape:
        if op is _sre.AT:
            return _Shape(frozenset(), frozenset(), nullable=True, open_ended=False)
        if op is _sre.BRANCH:
            shapes = [self.shape(alt) for alt in av[1]]
            return _Shape(
                frozenset[int]().union(*(s.first for s in shapes)),
                frozenset[int]().union(*(s.chars for s in shapes)),
                any(s.nullable for s in shapes),
                any(s.open_ended for s in shapes),
            )
        if op in _REPEATS:
            low, high, body = av
            inner = self.shape(body)
            wide = high == _sre.MAXREPEAT or high - low > _LONG_REPEAT
            return _Shape(
                inner.first, inner.chars, low == 0 or inner.nullable, wide or inner.open_ended
            )
        if op in (_sre.SUBPATTERN, _sre.ATOMIC_GROUP):
            return self.shape(_children(op, av)[0])
        chars = self._one_char(op, av)
        return _Shape(chars, chars, nullable=False, open_ended=False)

    def _one_char(self, op: Any, av: Any) -> frozenset[int]:
        if op is _sre.LITERAL:
            return self._class_item(op, av)
        if op is _sre.NOT_LITERAL:
            return self.universe - self._class_item(_sre.LITERAL, av)
        if op is _sre.ANY:
            return self.universe
        negate = any(kind is _sre.NEGATE for kind, _ in av)  # IN, a class like [^a-z]
        hit = frozenset[int]().union(*(self._class_item(kind, value) for kind, value in av))
        return self.universe - hit if negate else hit

    def _prefix(self, items: Any) -> list[frozenset[int]]:
        """The characters a match takes position by position, as far as that is fixed."""
        prefix: list[frozenset[int]] = []
        for op, av in _flatten(items):
            if op is _sre.AT:
                continue  # matches no character; skipping it only widens the prefix
            if op in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
                prefix.append(self._one_char(op, av))
            elif op in _REPEATS and av[0] == av[1] and len(body := self._prefix(av[2])) == 1:
                prefix.extend(body * av[0])
            else:
                break
            if len(prefix) >= _PREFIX_CHARS:
                break
        return prefix

    # -- the checks ----------------------------------------------------------------------

    def _check(self, items: Any, at_end: bool) -> None:
        """`at_end`: nothing follows this sequence in the whole pattern."""
        flat = list(_flatten(items))
        for index, (op, av) in enumerate(flat):
            last = at_end and index == len(flat) - 1
            if op is _sre.BRANCH:
                for alt in av[1]:
                    self._check(alt, at_end=last)
            elif op in _REPEATS:
                _, high, body = av
                if high > 1:
                    self._check_repeated(body)
                self._check(body, at_end=False)
        self._check_competing(flat, at_end)

    def _check_repeated(self, body: Any) -> None:
        if self._has_variable_repeat(body):
            raise ValueError(NESTED_QUANTIFIER)
        shape = self.shape(body)
        if shape.nullable:
            raise ValueError(EMPTY_REPEAT)
        if self._ambiguous(body, follow=shape.first):
            raise ValueError(OVERLAPPING_ALTERNATIVES)

    def _has_variable_repeat(self, items: Any) -> bool:
        for op, av in items:
            if op in _REPEATS and av[0] < av[1] and av[1] > 1:
                return True
            if any(self._has_variable_repeat(child) for child in _children(op, av)):
                return True
        return False

    def _ambiguous(self, items: Any, follow: frozenset[int]) -> bool:
        """Whether one iteration of a repeated body can match the same text two ways: two
        alternatives, or an optional part and what follows it (`follow`: what may come after
        `items`, here the start of the next iteration), can match the same characters."""
        flat = list(_flatten(items))
        # after[i]: the characters that can come right after flat[i].
        after = [follow] * len(flat)
        for index in range(len(flat) - 1, 0, -1):
            part = self._item(*flat[index])
            after[index - 1] = part.first | after[index] if part.nullable else part.first
        for (op, av), next_chars in zip(flat, after, strict=True):
            if op is _sre.BRANCH:
                if self._alternatives_overlap(av[1], next_chars):
                    return True
                if any(self._ambiguous(alt, next_chars) for alt in av[1]):
                    return True
            elif op in _REPEATS:
                low, high, body = av
                inner = self.shape(body)
                if low < high and inner.first & next_chars:
                    return True
                if self._ambiguous(body, inner.first | next_chars if high > 1 else next_chars):
                    return True
        return False

    def _alternatives_overlap(self, alternatives: list[Any], next_chars: frozenset[int]) -> bool:
        """Two alternatives that can start the same way: both start with a common character
        and, when neither can be empty, their fixed beginnings do not part ("boa tarde" and
        "boa noite" part at the fourth character)."""
        starts = []
        for alt in alternatives:
            shape = self.shape(alt)
            first = shape.first | next_chars if shape.nullable else shape.first
            starts.append((first, None if shape.nullable else self._prefix(alt)))
        for (first_a, prefix_a), (first_b, prefix_b) in combinations(starts, 2):
            if not first_a & first_b:
                continue
            if prefix_a is not None and prefix_b is not None:
                if any(not a & b for a, b in zip(prefix_a, prefix_b, strict=False)):
                    continue
            return True
        return False

    def _check_competing(self, flat: list[tuple[Any, Any]], at_end: bool) -> None:
        """`.*a.*b` on 4,096 "a"s takes over a minute: two open-ended parts in a row that
        can share characters, with nothing between them that only one could match."""
        shapes = [self._item(op, av) for op, av in flat]
        ended = [i for i, s in enumerate(shapes) if s.open_ended]
        for i, j in combinations(ended, 2):
            left, right = shapes[i], shapes[j]
            if at_end and j == len(shapes) - 1 and right.nullable:
                continue  # a trailing .* always succeeds: nothing after it can fail
            common = left.chars & right.chars
            between = shapes[i + 1 : j]
            if common and all(s.nullable or s.chars & common for s in between):
                raise ValueError(COMPETING_QUANTIFIERS)


# -- the same pattern in RE2's syntax ----------------------------------------------------

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
    _sre.CATEGORY_DIGIT: lambda c: "0" <= c <= "9",
    _sre.CATEGORY_SPACE: lambda c: c in " \t\n\r\f\v",
    _sre.CATEGORY_WORD: lambda c: c.isascii() and _is_word(c),
}
_UNICODE_TESTS: dict[Any, Callable[[str], bool]] = {
    _sre.CATEGORY_DIGIT: str.isdecimal,
    _sre.CATEGORY_SPACE: str.isspace,
    _sre.CATEGORY_WORD: _is_word,
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
    negated = category in _NOT_CATEGORIES
    test = tests[_NOT_CATEGORIES[category] if negated else category]
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


class _Translation:
    """The parsed pattern in RE2's syntax, matching what Python's `re` would match.

    Groups become non-capturing (only whether a text matches counts), flags are carried
    over, \\w \\d \\s become explicit code-point classes, and `$` keeps Python's meaning
    (also before a final line break). Python's \\b is Unicode and RE2's is ASCII (RE2 has no
    lookaround to build one), so a Unicode \\b is written from what surrounds it: between
    a letter and a space it always holds and disappears; at the start or end of the
    match, beside a letter, it becomes one more character that is not a letter (or the
    start or end of the text), which changes where a match lies but never whether there
    is one. Elsewhere it is refused."""

    def __init__(self, check: _PatternCheck) -> None:
        self.check = check
        self.word = frozenset(c for c in check.universe if _is_word(chr(c)))

    def run(self) -> str:
        flags = self.check.parsed.state.flags  # holds re.IGNORECASE: _FLAGS
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
            if op is _sre.AT:
                out.append(self._at(av, flags, items, index, before, after, last))
            elif op is _sre.SUBPATTERN:
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
            elif op is _sre.BRANCH:
                around = (
                    self._kind(items[:index], True, before),
                    self._kind(items[index + 1 :], False, after),
                )
                alternatives = [
                    self._sequence(list(alt), flags, *around, at_end=last) for alt in av[1]
                ]
                out.append("(?:" + "|".join(alternatives) + ")")
            elif op in _REPEATS:
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
        if high == _sre.MAXREPEAT:
            count = {0: "*", 1: "+"}.get(low, f"{{{low},}}")
        elif low == high:
            count = f"{{{low}}}"
        else:
            count = "?" if (low, high) == (0, 1) else f"{{{low},{high}}}"
        lazy = "?" if op is _sre.MIN_REPEAT else ""
        return f"(?:{text}){count}{lazy}"

    def _one(self, op: Any, av: Any, flags: int) -> str:
        if op is _sre.LITERAL:
            return _char(av)
        if op is _sre.NOT_LITERAL:
            return f"[^{_char(av)}]"
        if op is _sre.ANY:
            return "."  # without (?s) not a line break, as in Python
        if op is _sre.IN:
            return self._class(av, flags)
        raise ValueError(f"uses a construct the bridge cannot match ({op})")

    def _class(self, items: list[tuple[Any, Any]], flags: int) -> str:
        ascii_only = bool(flags & re.ASCII)
        negate = False
        parts: list[str] = []
        categories_only = True
        for kind, value in items:
            if kind is _sre.NEGATE:
                negate = True
            elif kind is _sre.CATEGORY and (value in _UNICODE_TESTS or value in _NOT_CATEGORIES):
                parts.append(_category(value, ascii_only))
            elif kind is _sre.LITERAL:
                parts.append(_char(value))
                categories_only = False
            elif kind is _sre.RANGE:
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
        if code is _sre.AT_BEGINNING:
            return "^"  # RE2's, like Python's, is the start of a line with (?m)
        if code is _sre.AT_BEGINNING_STRING:
            return "\\A"
        if code is _sre.AT_END_STRING:
            return "\\z"
        if code is _sre.AT_END:
            if multiline:
                return "$"
            # Python's $ also holds before a final line break. When what follows can match
            # nothing, taking that line break changes nothing; otherwise the very end.
            return "(?:\\n?\\z)" if last else "\\z"
        if code in (_sre.AT_BOUNDARY, _sre.AT_NON_BOUNDARY):
            if flags & re.ASCII:
                return "\\b" if code is _sre.AT_BOUNDARY else "\\B"
            return self._boundary(
                code is _sre.AT_NON_BOUNDARY,
                self._kind(items[:index], True, before),
                self._kind(items[index + 1 :], False, after),
            )
        raise ValueError(f"uses an anchor the bridge cannot match ({code})")

    def _boundary(self, negated: bool, before: str, after: str) -> str:
        word = _category(_sre.CATEGORY_WORD, False)
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

        if op is _sre.AT:
            starts = (_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING)
            ends = (_sre.AT_END, _sre.AT_END_STRING)
            # The start of the text (or of a line: after a line break) is not a letter.
            return _OTHER if av in (starts if backwards else ends) else _UNKNOWN
        if op in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
            chars = self.check._one_char(op, av)
            if chars and chars <= self.word:
                return _WORD
            return _OTHER if chars and not chars & self.word else _UNKNOWN
        if op is _sre.SUBPATTERN:
            return self._kind(list(av[3]), backwards, rest())
        if op is _sre.BRANCH:
            after = rest()
            kinds = {self._kind(list(alt), backwards, after) for alt in av[1]}
            return kinds.pop() if len(kinds) == 1 else _UNKNOWN
        if op in _REPEATS:
            low, _, body = av
            after = rest()
            inner = self._kind(list(body), backwards, after)
            return inner if low > 0 or inner == after else _UNKNOWN
        return _UNKNOWN


def _written_out(items: Iterable[tuple[Any, Any]]) -> int:
    """How many characters the pattern names once its counted repeats are written out:
    about the number of states RE2's automaton has."""
    total = 0
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            total += (max(low, 1) if high == _sre.MAXREPEAT else high) * _written_out(body)
        elif op is _sre.BRANCH:
            total += sum(_written_out(alt) for alt in av[1])
        elif op is _sre.SUBPATTERN:
            total += _written_out(av[3])
        elif op is not _sre.AT:
            total += 1
    return total


_INLINE_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))


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
        parsed = _sre.parse(pattern, _FLAGS)
    except re.error as exc:
        raise ValueError(f"the pattern is not a regular expression: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("the pattern nests too deeply") from exc
    try:
        check = _PatternCheck(parsed)
        check.run()
        if (written_out := _written_out(parsed)) > MAX_WRITTEN_OUT:
            raise ValueError(LONG_REPEATS.format(written_out, MAX_WRITTEN_OUT))
        expression = _Translation(check).run()
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
