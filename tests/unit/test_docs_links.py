"""The project documents itself: every relative link in its Markdown reaches a file (and a
heading, when it names one), and nothing points at documents the project does not ship."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import ROOT

# Not the project's own files: tools' environments, caches, run folders, generated code.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        ".lockvenv",
        "node_modules",
        ".run",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        "results",
    }
)
TEXT_SUFFIXES = frozenset(
    {".md", ".py", ".pyi", ".proto", ".toml", ".yml", ".yaml", ".json", ".cfg", ".ini", ".sh"}
)
TEXT_NAMES = frozenset({"Makefile", "Dockerfile", ".env.example", ".dockerignore", ".gitignore"})
# Spelt in two halves so this file does not match itself.
FOREIGN_DOCUMENTS = ("SPEC" + ".md", "../" + "shared")

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def project_files() -> Iterator[Path]:
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS and not (
                    folder == ROOT and entry.name == "bridge"
                ):
                    stack.append(entry)
            elif entry.suffix in TEXT_SUFFIXES or entry.name in TEXT_NAMES:
                yield entry


def markdown_files() -> list[Path]:
    return sorted(p for p in project_files() if p.suffix == ".md")


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped (hyphens and
    underscores kept), spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    kept = (
        c
        for c in text
        if c in "-_ " or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(path):
        text = INLINE_CODE.sub("", line)
        for match in INLINE_LINK.finditer(text):
            yield number, match.group(1)
        reference = REFERENCE_LINK.match(text)
        if reference:
            yield number, reference.group(1)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file")
        elif not destination.is_relative_to(root):
            problems.append(f"{where}: outside the project")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no such heading in {destination.relative_to(root)}")
    return problems


def test_the_project_has_its_markdown_where_the_readme_says() -> None:
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {
        "README.md",
        "docs/n8n-contract.md",
        "docs/architecture.md",
        "docs/bot-control.md",
        "docs/proactive.md",
        "docs/operating.md",
        "docs/configuration.md",
        "docs/benchmarks.md",
        "docs/testing.md",
        "examples/n8n/README.md",
    } <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(path: Path) -> None:
    assert broken_links(path) == []


def test_no_file_points_at_documents_the_project_does_not_ship() -> None:
    mentions = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in project_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for name in FOREIGN_DOCUMENTS
        if name in line
    ]
    assert mentions == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Connecting a real Kommo account and n8n", "connecting-a-real-kommo-account-and-n8n"),
        (
            "5. Verify that requests come from the bridge (optional)",
            "5-verify-that-requests-come-from-the-bridge-optional",
        ),
        ("`POST /send-response`", "post-send-response"),
        ("Step 1 — the bridge's own settings", "step-1--the-bridges-own-settings"),
        ("`conversation`", "conversation"),
        ("[The bar](#x) and `env_file`", "the-bar-and-env_file"),
    ],
)
def test_anchors_are_made_the_way_github_makes_them(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_a_missing_heading_and_a_way_out_are_caught(tmp_path: Path) -> None:
    root = tmp_path.resolve() / "project"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.md").write_text("# Other\n\n## The envelope\n")
    page = root / "docs" / "page.md"
    page.write_text(
        "# Title\n\n[ok](other.md#the-envelope) [self](#title) [web](https://x.org/a.md)\n"
        "[gone](missing.md) [nowhere](other.md#no-such-heading)\n"
        "[out](../../outside.md)\n"
        "```\n[in code](ignored.md)\n```\n`[inline](ignored.md)`\n"
    )
    (tmp_path / "outside.md").write_text("# Outside\n")
    assert [p.split(": ", 1)[1] for p in broken_links(page, root)] == [
        "missing.md: no such file",
        "other.md#no-such-heading: no such heading in docs/other.md",
        "../../outside.md: outside the project",
    ]
