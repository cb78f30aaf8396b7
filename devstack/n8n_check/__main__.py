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
from urllib.parse import urlsplit

from devstack.n8n_check.attacker import Attacker
from devstack.n8n_check.check import Check, Outcome, describe_calls
from devstack.n8n_check.install import InstallError, ensure_n8n, use_existing
from devstack.n8n_check.n8n import N8n, N8nError
from devstack.n8n_check.paths import PATHS
from devstack.n8n_check.privacy import leaks
from devstack.processes import ROOT, Launcher, StartupError, free_port
from devstack.stack import Stack, StackConfig, start_stack

log = logging.getLogger("n8n-check")

WORKFLOW = ROOT / "examples" / "n8n" / "bridge-reply-workflow.json"
CHECK_DIR = ROOT / ".n8n-check"
WEBHOOK_TYPE = "n8n-nodes-base.webhook"
EXIT_FAILED = 1
# The credentials as examples/n8n/README.md names them (n8n links them by name and type).
OPENAI_CREDENTIAL = "OpenAI (bridge)"
SUPABASE_CREDENTIAL = "Supabase (bridge)"
BRIDGE_KEY_CREDENTIAL = "Bridge API key"
WEBHOOK_CREDENTIAL = "Bridge webhook auth"
# The header the bridge sends n8n (N8N_AUTH_HEADER) and the Webhook node expects.
WEBHOOK_AUTH_HEADER = "X-Bridge-Token"
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
    webhook_auth: tuple[str, str],
    bridge_host: str,
) -> list[dict[str, Any]]:
    """The credentials the workflow names, filled as examples/n8n/README.md says, pointing
    at the doubles and the bridge. Their ids are not the workflow's: n8n links them by
    name and type, as on a user's import."""
    header_name, header_value = webhook_auth
    data = {
        ("openAiApi", OPENAI_CREDENTIAL): {
            "apiKey": openai_key,
            "url": f"{openai_url}/v1",
            "header": False,
        },
        ("supabaseApi", SUPABASE_CREDENTIAL): {"host": supabase_url, "serviceRole": supabase_key},
        # The bridge's key, only for the bridge's host (the README's domain restriction).
        ("httpHeaderAuth", BRIDGE_KEY_CREDENTIAL): {
            "name": "X-API-Key",
            "value": api_key,
            "allowedHttpRequestDomains": "domains",
            "allowedDomains": bridge_host,
        },
        # What the Webhook node expects: the bridge's N8N_AUTH_HEADER.
        ("httpHeaderAuth", WEBHOOK_CREDENTIAL): {"name": header_name, "value": header_value},
    }
    named = {
        (kind, ref["name"])
        for node in workflow["nodes"]
        for kind, ref in node.get("credentials", {}).items()
    }
    unknown = sorted(f"{name} ({kind})" for kind, name in named if (kind, name) not in data)
    if unknown:
        raise N8nError(f"the workflow uses credentials the check cannot fill: {unknown}")
    return [
        {"id": f"n8nCheck{index:08d}", "name": name, "type": kind, "data": data[kind, name]}
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
    # Over the whole run, not only the forged envelopes: nothing ever goes to a URL an
    # envelope names.
    stolen = check.attacker.received()
    log.info(
        "%s  attacker (a URL only forged envelopes name): %d request(s)%s",
        "PASS" if not stolen else "FAIL",
        len(stolen),
        "".join(f"; {r.describe()}" for r in stolen[:3]),
    )
    # Over the whole run: the sandbox, playing WhatsApp, refused no free text sent into a
    # closed 24-hour window.
    closed = check.closed_window_sends()
    log.info(
        "%s  free text into a closed WhatsApp window: %d message(s)%s",
        "PASS" if not closed else "FAIL",
        len(closed),
        "".join(f"; lead {c.get('lead_id')}" for c in closed[:3]),
    )
    return passed and not dirty and not stolen and not closed


def run(run_dir: Path, binary: Path) -> bool:
    workflow = _workflow()
    logs = run_dir / "logs"
    api_key = secrets.token_urlsafe(24)
    # n8n gets its own key, which can only answer (EDGE_N8N_API_KEY): the workflow must
    # do all it does with it.
    n8n_key = secrets.token_urlsafe(24)
    openai_key, supabase_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    webhook_auth = (WEBHOOK_AUTH_HEADER, secrets.token_urlsafe(24))
    doubles = Launcher(logs, {})
    n8n = N8n(
        binary,
        run_dir / "n8n-home",
        free_port(),
        secrets.token_hex(24),
        logs / "n8n.log",
        webhook_headers=dict([webhook_auth]),
    )
    path = webhook_path(workflow)
    attacker = Attacker().start()
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
        # The bridge first: n8n is set up with its address (BRIDGE_URL), as
        # examples/n8n/README.md says. Nothing reaches n8n before a path runs.
        started = time.monotonic()
        stack = start_stack(
            StackConfig(
                log_dir=run_dir / "bridge",
                env={
                    **BRIDGE_ENV,
                    "N8N_WEBHOOK_URL": n8n.webhook_url(path),
                    "N8N_AUTH_HEADER": ": ".join(webhook_auth),
                },
                api_key=api_key,
                n8n_api_key=n8n_key,
            )
        )
        log.info("bridge ready in %.1f s at %s", time.monotonic() - started, stack.edge_url)
        n8n.extra_env["BRIDGE_URL"] = stack.edge_url
        logs.mkdir(parents=True, exist_ok=True)
        n8n.import_credentials(
            credentials(
                workflow,
                openai_url,
                openai_key,
                supabase_url,
                supabase_key,
                n8n_key,
                webhook_auth,
                bridge_host=urlsplit(stack.edge_url).hostname or "",
            )
        )
        n8n.import_workflow(WORKFLOW, workflow["id"])
        n8n.start()
        log.info("n8n ready in %.1f s at %s", n8n.wait_ready(path), n8n.url)
        check = Check(
            stack,
            n8n,
            openai_url,
            supabase_url,
            [api_key, n8n_key, stack.webhook_secret, webhook_auth[1]],
            attacker=attacker,
            webhook_path=path,
            webhook_auth=webhook_auth,
        )
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
        attacker.stop()


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
