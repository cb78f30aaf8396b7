"""`python -m devstack.n8n_check` (`make n8n-check`).

N8N_CHECK_INSTALL=/path/to/folder   use an n8n already installed there (the pinned
                                    version) instead of installing into .n8n-check/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from devstack.n8n_check.install import InstallError, ensure_n8n, use_existing
from devstack.n8n_check.n8n import N8n, N8nError
from devstack.n8n_check.paths import PATHS, Check, Outcome, describe_calls
from devstack.n8n_check.privacy import leaks
from devstack.processes import ROOT, Launcher, StartupError, free_port
from devstack.stack import Stack, StackConfig, start_stack

log = logging.getLogger("n8n-check")

WORKFLOW = ROOT / "examples" / "n8n" / "bridge-reply-workflow.json"
CHECK_DIR = ROOT / ".n8n-check"
WEBHOOK_TYPE = "n8n-nodes-base.webhook"
EXIT_FAILED = 1
# What the bridge runs with: its defaults (debounce 3 s, retries at once, 1 s, 5 s, 30 s…),
# except proactive hours, so the proactive path works at any time of day.
BRIDGE_ENV = {
    "PROACTIVE_HOURS": "00:00-24:00",
    "PROACTIVE_DAYS": "mon-sun",
    "LOG_LEVEL": "INFO",
}


def _workflow() -> dict[str, Any]:
    return dict(json.loads(WORKFLOW.read_text(encoding="utf-8")))


def webhook_path(workflow: dict[str, Any]) -> str:
    (webhook,) = [n for n in workflow["nodes"] if n["type"] == WEBHOOK_TYPE]
    return str(webhook["parameters"]["path"])


def credentials(
    workflow: dict[str, Any],
    openai_url: str,
    openai_key: str,
    supabase_url: str,
    supabase_key: str,
    api_key: str,
) -> list[dict[str, Any]]:
    """The credentials the workflow names, pointing at the doubles and the bridge. Their
    ids are not the workflow's: n8n links them by name and type, as on a user's import."""
    data = {
        "openAiApi": {"apiKey": openai_key, "url": f"{openai_url}/v1", "header": False},
        "supabaseApi": {"host": supabase_url, "serviceRole": supabase_key},
        "httpHeaderAuth": {"name": "X-API-Key", "value": api_key},
    }
    named = {
        (kind, ref["name"])
        for node in workflow["nodes"]
        for kind, ref in node.get("credentials", {}).items()
    }
    unknown = sorted(kind for kind, _ in named if kind not in data)
    if unknown:
        raise N8nError(f"the workflow uses credentials the check cannot fill: {unknown}")
    return [
        {"id": f"n8nCheck{index:08d}", "name": name, "type": kind, "data": data[kind]}
        for index, (kind, name) in enumerate(sorted(named), start=1)
    ]


def _n8n_binary() -> Path:
    existing = os.environ.get("N8N_CHECK_INSTALL")
    if existing:
        return use_existing(Path(existing))
    return ensure_n8n(CHECK_DIR / "n8n")


def _prepare_folder() -> Path:
    """The check's folder, and in it a fresh one for this run's logs and databases."""
    CHECK_DIR.mkdir(exist_ok=True)
    # The folder ignores itself: nothing in it (n8n, logs, databases) is ever committed.
    (CHECK_DIR / ".gitignore").write_text("*\n")
    run_dir = CHECK_DIR / "last-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    return run_dir


def _report(outcomes: list[Outcome], check: Check) -> bool:
    width = max(len(o.name) for o in outcomes)
    passed = True
    for outcome in outcomes:
        leaked = any(leaks(c, check.secrets) for c in outcome.calls)
        ok = outcome.ok and not leaked
        passed &= ok
        log.info(
            "%s  %s  %6.1f s  %s; %s",
            "PASS" if ok else "FAIL",
            outcome.name.ljust(width),
            outcome.seconds,
            outcome.detail,
            describe_calls(outcome.calls, check.secrets),
        )
    calls = check.model_calls()
    dirty = [c for c in calls if leaks(c, check.secrets)]
    log.info(
        "model double: %d request(s) in all, %d streamed, %d with personal data or secrets",
        len(calls),
        sum(c.streamed for c in calls),
        len(dirty),
    )
    return passed and not dirty


def run(run_dir: Path, binary: Path) -> bool:
    workflow = _workflow()
    logs = run_dir / "logs"
    api_key = secrets.token_urlsafe(24)
    openai_key, supabase_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    doubles = Launcher(logs, {})
    n8n = N8n(binary, run_dir / "n8n-home", free_port(), secrets.token_hex(24), logs / "n8n.log")
    stack: Stack | None = None
    try:
        openai_port, supabase_port = free_port(), free_port()
        openai = doubles.start(
            "openai-double",
            "devstack.n8n_check.openai_double",
            {"OPENAI_DOUBLE_PORT": str(openai_port), "OPENAI_DOUBLE_API_KEY": openai_key},
            openai_port,
            "http",
            ready_path="/_double/requests",
        )
        supabase = doubles.start(
            "supabase-double",
            "devstack.n8n_check.supabase_double",
            {"SUPABASE_DOUBLE_PORT": str(supabase_port), "SUPABASE_DOUBLE_KEY": supabase_key},
            supabase_port,
            "http",
            ready_path="/_double/rows",
        )
        doubles.wait_ready(openai)
        doubles.wait_ready(supabase)
        openai_url, supabase_url = f"http://{openai.address}", f"http://{supabase.address}"
        logs.mkdir(parents=True, exist_ok=True)
        n8n.import_credentials(
            credentials(workflow, openai_url, openai_key, supabase_url, supabase_key, api_key)
        )
        n8n.import_workflow(WORKFLOW, workflow["id"])
        n8n.start()
        path = webhook_path(workflow)
        log.info("n8n ready in %.1f s at %s", n8n.wait_ready(path), n8n.url)
        started = time.monotonic()
        stack = start_stack(
            StackConfig(
                log_dir=run_dir / "bridge",
                env={**BRIDGE_ENV, "N8N_WEBHOOK_URL": n8n.webhook_url(path)},
                api_key=api_key,
            )
        )
        log.info("bridge ready in %.1f s at %s", time.monotonic() - started, stack.edge_url)
        check = Check(stack, n8n, openai_url, supabase_url, [api_key, stack.webhook_secret])
        outcomes = []
        for step in PATHS:
            log.info("running: %s", step.__name__)
            outcomes.append(step(check))
        passed = _report(outcomes, check)
        sent = [c.body for c in check.model_calls()]
        (run_dir / "model-requests.json").write_text(json.dumps(sent, ensure_ascii=False, indent=2))
        for error in n8n.execution_errors():
            log.info("n8n execution failed at %s", error)
        log.info("logs, and every request the model got (model-requests.json): %s", run_dir)
        return passed
    finally:
        if stack is not None:
            stack.stop()
        n8n.stop()
        doubles.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.n8n_check", description=__doc__)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        run_dir = _prepare_folder()
        binary = _n8n_binary()
        return 0 if run(run_dir, binary) else EXIT_FAILED
    except (InstallError, N8nError, StartupError) as exc:
        log.error("n8n check: %s", exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
