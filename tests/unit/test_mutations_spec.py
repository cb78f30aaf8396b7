"""tests/mutants/mutations.toml stays true to the code (`make mutants` runs it; this runs
on every `make test`): each mutation's snippet occurs exactly once in its file, and every
test it names exists — so a refactor that moves or rewrites guarded code, or renames a
test, fails here at once instead of when someone next runs the mutants.

Tests are found by reading the files (a `def test_…` at the top level or in a class),
not by collecting them: collection of the e2e modules is too slow for every run."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.mutants.run import ROOT, Mutation, load, snippet_problem

MUTATIONS = load()


@cache
def _tests_in(path: Path) -> frozenset[str]:
    """`name` and `Class::name` of every test function defined in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for inner in node.body:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{inner.name}")
    return frozenset(n for n in names if n.split("::")[-1].startswith("test"))


def test_there_are_mutations_for_every_guarantee_the_issue_lists() -> None:
    assert len(MUTATIONS) >= 13
    names = {m.name for m in MUTATIONS}
    assert len(names) == len(MUTATIONS)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_the_snippet_occurs_exactly_once_in_its_file(mutation: Mutation) -> None:
    assert snippet_problem(mutation) == "", (
        f"{mutation.name}: {snippet_problem(mutation)} — update tests/mutants/mutations.toml"
    )


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_every_named_test_exists(mutation: Mutation) -> None:
    assert mutation.tests, f"{mutation.name} names no test"
    assert mutation.guarantee.strip(), f"{mutation.name} says no guarantee"
    for node_id in mutation.tests:
        file, _, name = node_id.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{mutation.name}: {file} does not exist"
        test = name.split("[")[0]  # a parametrised case is named by its function
        assert test in _tests_in(path), f"{mutation.name}: {node_id} is not a test of {file}"


def test_a_stale_snippet_is_reported(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("x = 1\nx = 1\n", encoding="utf-8")
    twice = Mutation("m", "code.py", "x = 1", "x = 2", "g", ("t",))
    gone = Mutation("m", "code.py", "y = 1", "y = 2", "g", ("t",))
    assert "2 times" in snippet_problem(twice, tmp_path)
    assert "0 times" in snippet_problem(gone, tmp_path)
