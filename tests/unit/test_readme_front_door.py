"""The README is a front door (issue 21): short, it says what the project is, gives the two
commands, the guide to a real Kommo account, the API at a glance, and one link to every
page under docs/, where everything else lives."""

from __future__ import annotations

import re

from devstack.processes import ROOT
from tests.unit.test_docs_links import HEADING, links, prose_lines

README = ROOT / "README.md"
MAX_LINES = 250
# The pages the README's sections moved to (issue 21); docs/*.md as a whole is checked too.
MOVED_TO = {
    "docs/architecture.md",
    "docs/bot-control.md",
    "docs/proactive.md",
    "docs/operating.md",
    "docs/configuration.md",
    "docs/benchmarks.md",
    "docs/testing.md",
}


def headings() -> list[str]:
    found = []
    for _, line in prose_lines(README):
        match = HEADING.match(line)
        if match:
            found.append(match.group(2))
    return found


def linked_files() -> set[str]:
    return {target.partition("#")[0] for _, target in links(README)}


def test_the_readme_is_at_most_250_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_to_every_page_under_docs() -> None:
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert MOVED_TO <= pages
    assert pages - linked_files() == set()


def test_the_readme_has_the_front_door_sections() -> None:
    found = headings()
    expected = [
        "The two commands",
        "Connecting a real Kommo account and n8n",
        "The HTTP API",
        "Where to read more",
    ]
    assert [h for h in expected if h not in found] == []
    assert found.index("The two commands") < found.index("Connecting a real Kommo account and n8n")


def test_the_two_commands_come_first() -> None:
    text = README.read_text()
    section = text[text.index("## The two commands") :]
    first_block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]


def test_the_api_at_a_glance_links_to_the_api_reference() -> None:
    text = README.read_text()
    start = text.index("## The HTTP API")
    section = text[start : text.index("\n## ", start + 1)]
    assert "(docs/api.md)" in section


def test_the_layout_table_names_one_existing_file_for_each_step() -> None:
    """Issue 22: from file names alone a newcomer finds where a webhook is acked, a message
    applied, a rule decided, the envelope POSTed, a reply sent and the bot paused on a
    person's message — one hop each. Every file the table names exists (a relative name is
    under the directory of the path before it in its cell, or one of its parents)."""
    text = README.read_text()
    section = text.split("## Where things happen in the code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    steps = {row.split("|")[1].strip(): row.split("|")[2] for row in rows[1:]}
    for wanted in ("acked", "applied", "decides", "POSTed", "reply is sent", "paused"):
        assert any(wanted in step for step in steps), f"no row says where {wanted!r} happens"
    for step, cell in steps.items():
        base = ROOT
        for name in re.findall(r"`([\w./]+\.(?:py|lua))`", cell):
            candidates = [ROOT / name] + [d / name for d in (base, *base.parents)]
            found = [c for c in candidates if c.is_file()]
            assert found, f"{step}: {name} does not exist"
            base = found[0].parent if name.startswith("services/") else base
