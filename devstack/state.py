"""What `make run` keeps from one run to the next, in one folder (`.run/` by default,
`RUN_STATE_DIR` or `--state-dir` to move it):

- `state.json`: the generated API key, webhook secret and Redis password, every port by
  role, and the Kommo account whose tokens the Redis data holds. Mode 0600: it holds the
  key.
- `redis-data/`: Redis's append-only file: OAuth tokens, conversations, queues.
- `logs/<start time>/`: each run's logs (a clean start keeps them).
- `lock`: held by the runner using the folder, so two never share one Redis data folder.

`--clean` (`make run-clean`) removes `state.json` and `redis-data/` before starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "state.json"
REDIS_DATA = "redis-data"
LOGS = "logs"
LOCK_FILE = "lock"
SANDBOX_ACCOUNT = "sandbox"


class StateError(RuntimeError):
    """The state folder cannot be used; the message says why and what to do, in one line."""


@dataclass
class RunState:
    api_key: str = ""
    # The key n8n answers with (EDGE_N8N_API_KEY): only /send-response and the
    # scheduling status take it.
    n8n_api_key: str = ""
    webhook_secret: str = ""
    # The password of the Redis `make run` starts (not of one given by REDIS_URL).
    redis_password: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    # SANDBOX_ACCOUNT, or the URL of the Kommo account whose tokens are in redis-data/.
    kommo_account: str = ""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def redis_data(self) -> Path:
        return self.path / REDIS_DATA

    def new_log_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate = self.path / LOGS / stamp
        n = 1
        while candidate.exists():
            n += 1
            candidate = self.path / LOGS / f"{stamp}-{n}"
        return candidate

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The Redis data holds the OAuth tokens: the owner's only, whatever the umask.
        self.redis_data.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.redis_data, 0o700)
        with (self.path / LOCK_FILE).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"another `make run` is using {self.path}: stop it first, or give this "
                    "one a folder of its own with RUN_STATE_DIR"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> RunState:
        """The state of the last run; an empty one when there was none."""
        try:
            raw = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RunState()
        try:
            data = json.loads(raw)
            state = RunState(
                api_key=str(data.get("api_key", "")),
                n8n_api_key=str(data.get("n8n_api_key", "")),
                webhook_secret=str(data.get("webhook_secret", "")),
                redis_password=str(data.get("redis_password", "")),
                ports={str(role): int(port) for role, port in data.get("ports", {}).items()},
                kommo_account=str(data.get("kommo_account", "")),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{self.state_file} is not a state file of this runner ({exc}): "
                "delete it, or start clean with `make run-clean`"
            ) from None
        if any(not 0 < port < 65536 for port in state.ports.values()):
            raise StateError(
                f"{self.state_file} holds a port outside 1-65535: delete it, or start "
                "clean with `make run-clean`"
            )
        return state

    def save(self, state: RunState) -> None:
        """Written whole or not at all (a new file renamed over the old), readable by
        the owner only."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)  # an older file of another mode is replaced, not kept
        os.replace(temporary, self.state_file)

    def wipe(self) -> list[Path]:
        """Forget the last runs: the state file and the Redis data (an empty folder is left
        for the next Redis). Returns what it removed."""
        removed = []
        if self.state_file.exists():
            self.state_file.unlink()
            removed.append(self.state_file)
        if self.redis_data.exists():
            shutil.rmtree(self.redis_data)
            removed.append(self.redis_data)
        self.redis_data.mkdir(mode=0o700, parents=True)
        return removed
