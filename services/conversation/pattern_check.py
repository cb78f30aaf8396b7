"""The check a trigger's pattern passes before it is matched (patterns.py): the shapes that
take a backtracking engine (Python's `re`) exponential or high-polynomial time are refused,
as the rules have always said, so that a pattern the bridge accepts is safe with such an
engine too; and so are the constructs RE2 cannot express (backreferences, lookarounds,
atomic groups, possessive quantifiers).

It reads the pattern as Python's own parser gives it (`sre`, also read by the translation
into RE2's syntax in pattern_re2.py); a node it does not know is refused rather than
guessed at.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Any

# Python's parser of regular expressions: `re._parser` is private but has been stable
# since Python 3.11 (before, `sre_parse`).
sre: Any = importlib.import_module("re._parser")
REPEATS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT})
_KNOWN = frozenset(
    {
        sre.LITERAL,
        sre.NOT_LITERAL,
        sre.ANY,
        sre.IN,
        sre.AT,
        sre.BRANCH,
        sre.SUBPATTERN,
        sre.ATOMIC_GROUP,
        *REPEATS,
    }
)
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
    sre.CATEGORY_DIGIT: str.isdecimal,
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
}
NOT_CATEGORIES = {
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
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
        if op is sre.SUBPATTERN:
            yield from _flatten(av[3])
        elif op is sre.ATOMIC_GROUP:
            yield from _flatten(av)
        else:
            yield op, av


def _children(op: Any, av: Any) -> list[Any]:
    if op is sre.BRANCH:
        return list(av[1])
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op in REPEATS:
        return [av[2]]
    return []


@lru_cache(maxsize=4096)
def _variants(code: int) -> frozenset[int]:
    """The character and its other cases: the pattern is matched case-insensitively."""
    char = chr(code)
    return frozenset({code} | {ord(c) for c in (char.lower(), char.upper()) if len(c) == 1})


class PatternCheck:
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
            if op in (sre.GROUPREF, sre.GROUPREF_EXISTS):
                raise ValueError("uses a backreference (\\1, (?P=name), (?(1)…)); not allowed")
            if op in (sre.ASSERT, sre.ASSERT_NOT):
                raise ValueError(
                    "uses a lookahead or lookbehind ((?=…), (?!…), (?<=…), (?<!…)); not allowed"
                )
            if op is sre.ATOMIC_GROUP or op is sre.POSSESSIVE_REPEAT:
                raise ValueError(
                    "uses an atomic group or a possessive quantifier ((?>…), a*+, a++); not allowed"
                )
            if op not in _KNOWN:
                raise ValueError(f"uses a construct the bridge cannot check ({op})")
            if op in (sre.LITERAL, sre.NOT_LITERAL):
                named.add(av)
            elif op is sre.IN:
                for kind, value in av:
                    if kind is sre.LITERAL:
                        named.add(value)
                    elif kind is sre.RANGE:
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
        if kind is sre.LITERAL:
            wanted = _variants(value)
            return frozenset(c for c in self.universe if _variants(c) & wanted)
        if kind is sre.RANGE:
            low, high = value
            return frozenset(
                c for c in self.universe if any(low <= v <= high for v in _variants(c))
            )
        if kind is sre.CATEGORY:
            if value in _CATEGORIES:
                test = _CATEGORIES[value]
                return frozenset(c for c in self.universe if test(chr(c)))
            if value in NOT_CATEGORIES:
                return self.universe - self._class_item(kind, NOT_CATEGORIES[value])
            return self.universe  # another category: assume it can be anything
        if kind is sre.NEGATE:
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
        if op is sre.AT:
            return _Shape(frozenset(), frozenset(), nullable=True, open_ended=False)
        if op is sre.BRANCH:
            shapes = [self.shape(alt) for alt in av[1]]
            return _Shape(
                frozenset[int]().union(*(s.first for s in shapes)),
                frozenset[int]().union(*(s.chars for s in shapes)),
                any(s.nullable for s in shapes),
                any(s.open_ended for s in shapes),
            )
        if op in REPEATS:
            low, high, body = av
            inner = self.shape(body)
            wide = high == sre.MAXREPEAT or high - low > _LONG_REPEAT
            return _Shape(
                inner.first, inner.chars, low == 0 or inner.nullable, wide or inner.open_ended
            )
        if op in (sre.SUBPATTERN, sre.ATOMIC_GROUP):
            return self.shape(_children(op, av)[0])
        chars = self._one_char(op, av)
        return _Shape(chars, chars, nullable=False, open_ended=False)

    def _one_char(self, op: Any, av: Any) -> frozenset[int]:
        if op is sre.LITERAL:
            return self._class_item(op, av)
        if op is sre.NOT_LITERAL:
            return self.universe - self._class_item(sre.LITERAL, av)
        if op is sre.ANY:
            return self.universe
        negate = any(kind is sre.NEGATE for kind, _ in av)  # IN, a class like [^a-z]
        hit = frozenset[int]().union(*(self._class_item(kind, value) for kind, value in av))
        return self.universe - hit if negate else hit

    def _prefix(self, items: Any) -> list[frozenset[int]]:
        """The characters a match takes position by position, as far as that is fixed."""
        prefix: list[frozenset[int]] = []
        for op, av in _flatten(items):
            if op is sre.AT:
                continue  # matches no character; skipping it only widens the prefix
            if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
                prefix.append(self._one_char(op, av))
            elif op in REPEATS and av[0] == av[1] and len(body := self._prefix(av[2])) == 1:
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
            if op is sre.BRANCH:
                for alt in av[1]:
                    self._check(alt, at_end=last)
            elif op in REPEATS:
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
            if op in REPEATS and av[0] < av[1] and av[1] > 1:
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
            if op is sre.BRANCH:
                if self._alternatives_overlap(av[1], next_chars):
                    return True
                if any(self._ambiguous(alt, next_chars) for alt in av[1]):
                    return True
            elif op in REPEATS:
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
