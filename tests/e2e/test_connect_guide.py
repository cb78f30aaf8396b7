"""README's "Connecting a real Kommo account and n8n", followed in the order written.

`.env.example` is copied to `.env` and each step fills in only the variables it names;
the Kommo sandbox stands in for the real account (its integration registered with the
step 2 Redirect URL) and the n8n stand-in for the imported workflow. The bridge is started
with `make run`'s runner on that `.env`, authorised through the browser redirects,
subscribed to the webhook, and a customer's message is answered in the chat.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from dotenv import dotenv_values

from devstack.processes import ROOT, Launcher, Process, free_port
from devstack.stack import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_REPLY_FIELD_ID,
    SANDBOX_SALESBOT_ID,
)
from tests.e2e.conftest import wait_for

LEAD = 9100003
_START_TIMEOUT_SECONDS = 60.0
# What the runner reads from the environment: the test's own values only.
_RUNNER_PREFIXES = (
    "KOMMO_", "N8N_", "EDGE_", "BOT_", "MESSAGE_", "REDIS_", "PROACTIVE_", "SCALE_", "RUN_",
    "SANDBOX_", "STANDIN_",
)  # fmt: skip
STEP = re.compile(r"^### Step (\d+) — .*$", re.M)


def guide_steps() -> dict[int, str]:
    """The text of each step of the guide, by number."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Connecting a real Kommo account and n8n")
    end = readme.index("\n## ", start + 1)
    parts = STEP.split(readme[start:end])
    return {int(number): text for number, text in zip(parts[1::2], parts[2::2], strict=True)}


def fill(env_file: Path, values: dict[str, str]) -> None:
    """What a person does in an editor: the variable's line gets the value."""
    text = env_file.read_text()
    for name, value in values.items():
        text, found = re.subn(rf"^(# )?{name}=.*$", f"{name}={value}", text, count=1, flags=re.M)
        assert found, f"{name} is not in .env.example"
    env_file.write_text(text)


class Account:
    """The Kommo sandbox and the n8n stand-in, before the bridge exists."""

    def __init__(self, log_dir: Path, edge_url: str, api_key: str) -> None:
        self.launcher = Launcher(log_dir, {})
        sandbox_port, standin_port = free_port(), free_port()
        self.sandbox = self._start(
            "kommo-sandbox",
            "sandbox.kommo",
            # The integration's Redirect URL as registered in step 2; no webhook yet.
            {
                "SANDBOX_PORT": str(sandbox_port),
                "SANDBOX_REDIRECT_URI": f"{edge_url}/oauth/callback",
            },
            sandbox_port,
            "/_sandbox/stats",
        )
        self.standin = self._start(
            "n8n-standin",
            "sandbox.n8n_standin",
            # Step 4's Header Auth credential: the bridge's EDGE_API_KEY.
            {"STANDIN_PORT": str(standin_port), "STANDIN_API_KEY": api_key},
            standin_port,
            "/_standin/received",
        )

    def _start(self, name: str, module: str, env: dict[str, str], port: int, path: str) -> Process:
        process = self.launcher.start(name, module, env, port, "http")
        self.launcher.wait_ready(process, path)
        return process

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.sandbox.address}"

    @property
    def standin_url(self) -> str:
        return f"http://{self.standin.address}"


def make_run(env_file: Path, state_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`make run` on this `.env` (its runner, `python -m devstack`), output to a file."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_RUNNER_PREFIXES)}
    command = [sys.executable, "-m", "devstack", "--env-file", str(env_file)]
    with (state_dir.parent / "make-run.out").open("wb") as output:
        return subprocess.Popen(
            [*command, "--state-dir", str(state_dir)],
            cwd=ROOT,
            env={**base, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def ctrl_c(runner: subprocess.Popen[bytes]) -> None:
    if runner.poll() is None:
        runner.send_signal(signal.SIGINT)
    try:
        runner.wait(_START_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()


def test_the_connection_guide_works_in_the_order_written(
    tmp_path: Path, http: httpx.Client
) -> None:
    steps = guide_steps()
    assert sorted(steps) == list(range(1, len(steps) + 1))
    edge_port = free_port()
    edge_url = f"http://127.0.0.1:{edge_port}"  # stands for https://bridge.example.com
    env_file = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    api_key = secrets.token_urlsafe(32)
    account = Account(tmp_path / "account", edge_url, api_key)
    runner: subprocess.Popen[bytes] | None = None
    try:
        filled = {
            1: {
                "EDGE_PUBLIC_URL": edge_url,
                "EDGE_API_KEY": api_key,
                "KOMMO_WEBHOOK_SECRET": secrets.token_urlsafe(32),
                "KOMMO_SUBDOMAIN": "previdas",
            },
            2: {
                "KOMMO_REDIRECT_URI": f"{edge_url}/oauth/callback",
                "KOMMO_CLIENT_ID": SANDBOX_CLIENT_ID,
                "KOMMO_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
            },
            3: {
                "KOMMO_REPLY_FIELD_ID": SANDBOX_REPLY_FIELD_ID,
                "KOMMO_SALESBOT_ID": SANDBOX_SALESBOT_ID,
            },
            4: {"N8N_WEBHOOK_URL": f"{account.standin_url}/webhook/bridge"},
        }
        for number, values in filled.items():
            assert set(values) <= set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", steps[number]))
            fill(env_file, values)

        # Step 5: `make run` on that .env; the account's address is the sandbox's (the one
        # value a real account does not need), the edge's port one free here.
        runner = make_run(
            env_file,
            tmp_path / "state",
            {
                "KOMMO_BASE_URL": account.sandbox_url,
                "KOMMO_SANDBOX": "true",
                "EDGE_PORT": str(edge_port),
            },
        )
        output = tmp_path / "make-run.out"

        def running() -> bool:
            if runner is not None and runner.poll() is not None:
                raise AssertionError(f"make run exited:\n{output.read_text(errors='replace')}")
            return "bridge is running" in output.read_text(errors="replace")

        wait_for(running, _START_TIMEOUT_SECONDS, "make run's banner")
        file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        key = {"X-API-Key": api_key}
        health = http.get(f"{edge_url}/health", headers=key).json()
        assert set(health["services"].values()) == {"SERVING"}
        assert health["kommo"]["token_state"] == "missing"

        # Step 6: authorise in the browser: the edge, Kommo's consent page, the callback.
        page = http.get(
            f"{edge_url}/oauth/authorize", params={"api_key": api_key}, follow_redirects=True
        )
        assert page.status_code == 200, page.text
        assert str(page.url).startswith(f"{edge_url}/oauth/callback")
        wait_for(
            lambda: (
                http.get(f"{edge_url}/health", headers=key).json()["kommo"]["token_state"] == "ok"
            ),
            what="token_state ok",
        )
        assert http.get(f"{edge_url}/test-kommo-connectivity", headers=key).json()["ok"] is True

        # Step 7: `make kommo-webhook`, reading EDGE_PUBLIC_URL and EDGE_API_KEY from .env.
        registered = subprocess.run(
            [sys.executable, "-m", "devstack.kommo_webhook"],
            env={
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": str(ROOT),
                "EDGE_PUBLIC_URL": file_values["EDGE_PUBLIC_URL"],
                "EDGE_API_KEY": file_values["EDGE_API_KEY"],
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert registered.returncode == 0, registered.stderr
        hooks = http.get(f"{edge_url}/webhooks/test", headers=key).json()["registered_in_kommo"]
        assert [hook["disabled"] for hook in hooks] == [False]

        # Step 8: a customer writes; the reply reaches the chat and the lead has its note.
        http.post(
            f"{account.sandbox_url}/_sandbox/customer-message",
            json={"lead_id": LEAD, "text": "Oi, tudo bem?"},
        ).raise_for_status()

        def answered() -> list[dict[str, Any]]:
            chat = http.get(f"{account.sandbox_url}/_sandbox/chats/{LEAD}").json()
            return [
                m for m in chat if m["direction"] == "outgoing" and "Oi, tudo bem?" in m["text"]
            ]

        wait_for(answered, timeout=30, what="the reply in the sandbox chat")

        def noted() -> bool:
            lead = http.get(f"{account.sandbox_url}/_sandbox/leads/{LEAD}").json()
            return any("Resposta do assistente" in n["params"]["text"] for n in lead["notes"])

        # Added by the gateway once the delivery answered.
        wait_for(noted, what="the reply's note on the lead")
    finally:
        if runner is not None:
            ctrl_c(runner)
        account.launcher.stop_all()
