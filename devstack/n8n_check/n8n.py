"""One real n8n for the check: its own user folder (database, encryption key), the
workflow and credentials imported with n8n's CLI, started and stopped as a process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_CLI_TIMEOUT_SECONDS = 300
_START_TIMEOUT_SECONDS = 120
_STOP_TIMEOUT_SECONDS = 20
# An envelope no rule of the workflow's Switch routes: it proves the webhook is
# registered without making the workflow do anything.
_PROBE = {"event": "n8n-check.probe"}
# How long the probe's execution may take to show in n8n's database.
_SETTLE_SECONDS = 10


class N8nError(RuntimeError):
    """n8n did not do what the check asked; the message points at its log."""


@dataclass
class N8n:
    binary: Path
    home: Path  # N8N_USER_FOLDER: n8n keeps .n8n/ (database, config) in it
    port: int
    encryption_key: str
    log_path: Path
    # n8n's own settings for the workflow (BRIDGE_URL), on top of the check's.
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    # What the Webhook node's Header Auth expects: sent with the readiness probe.
    webhook_headers: dict[str, str] = field(default_factory=dict, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def webhook_url(self, path: str) -> str:
        return f"{self.url}/webhook/{path}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "N8N_USER_FOLDER": str(self.home),
            "N8N_ENCRYPTION_KEY": self.encryption_key,
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_HOST": "127.0.0.1",
            "N8N_PROTOCOL": "http",
            "WEBHOOK_URL": f"{self.url}/",
            "N8N_SECURE_COOKIE": "false",
            # Offline and quiet: no telemetry, banners, templates or update checks.
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_HIRING_BANNER_ENABLED": "false",
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
            "N8N_LOG_LEVEL": "info",
            "DB_SQLITE_POOL_SIZE": "2",
            "EXECUTIONS_DATA_SAVE_ON_SUCCESS": "all",
            "EXECUTIONS_DATA_SAVE_ON_ERROR": "all",
            **self.extra_env,
        }

    def cli(self, *args: str) -> str:
        """Run an n8n CLI command on this instance's database; its output, or N8nError."""
        self.home.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(self.binary), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=_CLI_TIMEOUT_SECONDS,
            check=False,
        )
        output = done.stdout + done.stderr
        with self.log_path.open("a") as handle:
            handle.write(f"$ n8n {' '.join(args)}\n{output}\n")
        # Some commands (update:workflow) report failure only in what they print.
        if done.returncode != 0 or "GOT ERROR" in output:
            raise N8nError(f"`n8n {' '.join(args)}` failed: see {self.log_path}")
        return output

    def import_credentials(self, credentials: list[dict[str, Any]]) -> None:
        """Plain `data` objects are encrypted by n8n on import."""
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "credentials.json"
        # It holds the keys in the clear until n8n has read it: for this user only.
        path.touch(mode=0o600)
        path.write_text(json.dumps(credentials))
        try:
            self.cli("import:credentials", f"--input={path}")
        finally:
            path.unlink()

    def import_workflow(self, path: Path, workflow_id: str) -> None:
        self.cli("import:workflow", f"--input={path}")
        self.cli("update:workflow", f"--id={workflow_id}", "--active=true")

    def start(self) -> None:
        with self.log_path.open("ab") as handle:
            # A session of its own: n8n starts helpers (its task runner), and stopping the
            # group stops them with it.
            self.process = subprocess.Popen(
                [str(self.binary), "start"],
                env=self.env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, webhook_path: str) -> float:
        """Seconds until /healthz answers and the workflow's webhook is registered."""
        started = time.monotonic()
        deadline = started + _START_TIMEOUT_SECONDS
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise N8nError(f"n8n exited during start-up: see {self.log_path}")
                try:
                    healthy = client.get(f"{self.url}/healthz").status_code == 200
                    if healthy:
                        before = len(self.executions())
                        probe = client.post(
                            self.webhook_url(webhook_path),
                            json=_PROBE,
                            headers=self.webhook_headers,
                        )
                        if probe.status_code == 200:
                            self._settle(before, time.monotonic() + _SETTLE_SECONDS)
                            return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise N8nError(f"n8n not ready within {_START_TIMEOUT_SECONDS} s: see {self.log_path}")

    def _settle(self, before: int, deadline: float) -> None:
        """Until the probe's execution is in n8n's database and finished: n8n answers the
        webhook before it writes the execution, and a path counting executions must not
        count the probe's."""
        while time.monotonic() < deadline:
            executions = self.executions()
            if len(executions) > before and all(e.finished for e in executions):
                return
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        database = self.home / ".n8n" / "database.sqlite"
        if not database.exists():
            return []
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute(sql, params).fetchall()

    def executions(self) -> list[Execution]:
        """Every execution so far (id, status), from n8n's database."""
        rows = self._query("SELECT id, status FROM execution_entity ORDER BY id")
        return [Execution(int(id_), str(status)) for id_, status in rows]

    def execution_error(self, execution_id: int) -> str:
        """`node: message [http code]` of a failed execution ("" when it did not fail)."""
        rows = self._query(
            "SELECT d.data FROM execution_data d JOIN execution_entity e"
            " ON d.executionId = e.id WHERE e.id = ? AND e.status IN ('error', 'crashed')",
            execution_id,
        )
        return _describe_error(rows[0][0]) if rows else ""

    def nodes_run(self, execution_id: int) -> dict[str, list[dict[str, Any]]]:
        """What each node of an execution gave, by node name: the `json` of every item it
        output (first output, last run); a node that did not run is not there."""
        rows = self._query("SELECT data FROM execution_data WHERE executionId = ?", execution_id)
        if not rows:
            return {}
        run_data = unflatten(rows[0][0]).get("resultData", {}).get("runData") or {}
        outputs: dict[str, list[dict[str, Any]]] = {}
        for node, runs in run_data.items():
            main = ((runs or [{}])[-1].get("data") or {}).get("main") or [[]]
            outputs[node] = [item.get("json", {}) for item in (main[0] or [])]
        return outputs

    def execution_errors(self) -> list[str]:
        """`node: message` of every failed execution so far, from n8n's database."""
        rows = self._query(
            "SELECT d.data FROM execution_entity e JOIN execution_data d"
            " ON d.executionId = e.id WHERE e.status IN ('error', 'crashed') ORDER BY e.id"
        )
        return [_describe_error(data) for (data,) in rows]


@dataclass(frozen=True)
class Execution:
    id: int
    status: str  # new, running, waiting, success, error, crashed, canceled

    @property
    def finished(self) -> bool:
        return self.status not in ("new", "running", "waiting")


def _describe_error(data: str) -> str:
    result = unflatten(data).get("resultData", {})
    error = result.get("error") or {}
    code = error.get("httpCode")
    where = f"{result.get('lastNodeExecuted', '?')}: {error.get('message', '?')}"
    return f"{where} [HTTP {code}]" if code else where


def unflatten(text: str) -> dict[str, Any]:
    """n8n stores execution data in the `flatted` format: a JSON array whose first entry is
    the root, where every string and object is an entry and is referred to by its index
    (as a string). Returns the root with the references resolved."""
    table: list[Any] = json.loads(text)
    revived: dict[int, Any] = {}

    def resolve(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        index = int(value)
        entry = table[index]
        if isinstance(entry, str):
            return entry
        if index in revived:
            return revived[index]
        if isinstance(entry, list):
            items: list[Any] = []
            revived[index] = items
            items.extend(resolve(v) for v in entry)
            return items
        if isinstance(entry, dict):
            mapping: dict[str, Any] = {}
            revived[index] = mapping
            mapping.update({k: resolve(v) for k, v in entry.items()})
            return mapping
        return entry

    root = resolve("0")
    return root if isinstance(root, dict) else {}
