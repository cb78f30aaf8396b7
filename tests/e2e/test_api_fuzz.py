"""Every endpoint of the edge fuzzed from its own OpenAPI schema (schemathesis) against the
running stack: no 5xx, whatever the input; and nothing protected answers without the key.

The seed is fixed so CI is repeatable; `FUZZ_SEED=<n>` (or `FUZZ_SEED=random`) and
`FUZZ_EXAMPLES=<n>` explore further by hand.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import isolated_stack

# No key needed: liveness and version, Prometheus, and the OAuth callback (which checks
# its own one-time state); the webhook checks its secret (so it answers 401 too).
PUBLIC = {("GET", "/health"), ("GET", "/version"), ("GET", "/metrics"), ("GET", "/oauth/callback")}


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A fast Kommo: the fuzzer's calls should not queue behind the real rate limit.
    with isolated_stack(
        tmp_path_factory,
        "fuzz",
        env={"KOMMO_RATE_LIMIT_RPS": "50"},
        sandbox_env={"SANDBOX_RATE_LIMIT_RPS": "50"},
    ) as running:
        yield running


def operations(stack: Stack) -> list[tuple[str, str]]:
    schema = httpx.get(f"{stack.edge_url}/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_no_input_makes_any_endpoint_fail_with_a_5xx(fuzz_stack: Stack, tmp_path: Path) -> None:
    seed = os.environ.get("FUZZ_SEED", "1")
    if seed == "random":
        seed = str(random.randrange(1 << 31))
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{fuzz_stack.edge_url}/openapi.json",
        "--header",
        f"X-API-Key: {fuzz_stack.api_key}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        os.environ.get("FUZZ_EXAMPLES", "12"),
        "--seed",
        seed,
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--warnings",
        "off",
    ]
    # In a folder of its own: whatever the fuzzer writes stays out of the repository.
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"schemathesis (seed {seed}) found failures:\n{report}"
    assert "Tested: " in run.stdout, report


@pytest.mark.parametrize("key", [None, "not-the-key"], ids=["no key", "wrong key"])
def test_nothing_protected_answers_without_the_key(fuzz_stack: Stack, key: str | None) -> None:
    ops = operations(fuzz_stack)
    assert len(ops) > 30  # the 26 endpoints of the design and the bridge's own
    headers = {"X-API-Key": key} if key else {}
    answered: dict[str, Any] = {}
    with httpx.Client(base_url=fuzz_stack.edge_url, timeout=10) as http:
        for method, path in ops:
            if (method, path) in PUBLIC:
                continue
            # Every path parameter 1: the key is checked before anything is looked up.
            url = "/".join("1" if "{" in part else part for part in path.split("/"))
            answer = http.request(method, url, headers=headers, json={})
            answered[f"{method} {path}"] = answer.status_code
    assert answered and all(status == 401 for status in answered.values()), answered
