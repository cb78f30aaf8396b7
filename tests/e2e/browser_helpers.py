"""A real headless Chromium for the edge's pages (dashboard, reports), through Playwright.

Debian's Chromium (/usr/bin/chromium), never a browser Playwright downloads; a test module
skips, saying why, where it is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)

# Chromium as root, with no network beyond localhost: no sandbox, no background calls.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A laptop's screen.
VIEWPORT = {"width": 1280, "height": 1100}


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def watched_page(
    browser: Any, expected_statuses: Collection[int] = (401,), **options: Any
) -> Iterator[Any]:
    """A new page; once the block is done, none of its scripts may have failed nor
    logged an error. Chromium logs every 4xx fetch: those of `expected_statuses` are
    earned on purpose (a wrong key, a refused range)."""
    opened = browser.new_page(**{"viewport": VIEWPORT, **options})
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def console(message: Any) -> None:
        expected = any(f"status of {status}" in message.text for status in expected_statuses)
        if message.type == "error" and not expected:
            problems.append(f"console {message.type}: {message.text}")

    opened.on("console", console)
    try:
        yield opened
    finally:
        opened.close()
    assert not problems, problems
