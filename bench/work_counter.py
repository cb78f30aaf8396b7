"""What a message costs the stack in Redis commands and gRPC calls, as the servers see them.

- **Redis commands sent**, from Redis's own MONITOR (`redis-cli monitor` to a file, so the
  count costs the benchmark's Python nothing): a script call is one command, the commands
  it runs inside are not counted (MONITOR shows those as `lua`); a pipeline of k commands
  is k. Each command is put to the stack process that holds the client's socket (/proc),
  so the benchmark's own INFO and HTTP calls are left out.
- **gRPC calls served**, from every service replica's `bridge_grpc_requests_total`.

Used by bench/envelope_latency.py (`--count-work`) and bench/idle.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# `1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "…"` or `[0 lua] "HSET" …`
_LINE = re.compile(r'^(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]+)"')
_GRPC = re.compile(r"^bridge_grpc_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def socket_owners(pids: dict[int, str]) -> dict[str, str]:
    """Local TCP port → the name of the stack process that holds the socket."""
    inodes: dict[str, str] = {}
    for pid, name in pids.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = name
    owners: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                port = str(int(fields[1].rsplit(":", 1)[1], 16))
                if fields[9] in inodes:
                    owners[port] = inodes[fields[9]]
    return owners


@dataclass
class Sent:
    """Commands the stack's processes sent Redis in a window."""

    by_command: dict[str, int] = field(default_factory=dict)
    by_process: dict[str, dict[str, int]] = field(default_factory=dict)
    in_scripts: int = 0  # what Redis ran inside those scripts (not sent)

    @property
    def total(self) -> int:
        return sum(self.by_command.values())


class RedisMonitor:
    """`redis-cli monitor` into a file for the length of a window."""

    def __init__(self, port: int, password: str, path: Path) -> None:
        self.port, self.password, self.path = port, password, path
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-cli") is not None

    def start(self) -> None:
        env = {**os.environ, "REDISCLI_AUTH": self.password}
        self.out = self.path.open("wb")
        self.process = subprocess.Popen(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "monitor"],
            stdout=self.out,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 5
        while self.path.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # "OK" once MONITOR is on

    def lines(self) -> int:
        return self.path.stat().st_size

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.out.close()

    def quiet(self, seconds: float = 2.0, timeout: float = 60.0) -> None:
        """Until the file grows by less than 2 KB in `seconds` (the stack idle again)."""
        deadline = time.monotonic() + timeout
        size = self.lines()
        while time.monotonic() < deadline:
            time.sleep(seconds)
            now = self.lines()
            if now - size < 2048:
                return
            size = now

    def sent(self, owners: dict[str, str]) -> Sent:
        result = Sent()
        with self.path.open("rb") as lines:
            for raw in lines:
                match = _LINE.match(raw.decode(errors="replace"))
                if match is None:
                    continue
                who, command = match.group(2), match.group(3).lower()
                if who == "lua":
                    result.in_scripts += 1
                    continue
                owner = owners.get(who.rsplit(":", 1)[-1])
                if owner is None:
                    continue  # the benchmark's own
                result.by_command[command] = result.by_command.get(command, 0) + 1
                mine = result.by_process.setdefault(owner, {})
                mine[command] = mine.get(command, 0) + 1
        return result


def grpc_served(metrics_ports: list[int]) -> dict[str, float]:
    """gRPC calls served so far, by method, summed over the given replicas' metrics."""
    served: dict[str, float] = {}
    for port in metrics_ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for labels, value in _GRPC.findall(text):
            method = dict(part.split("=", 1) for part in labels.split(",")).get("method", "?")
            method = method.strip('"')
            served[method] = served.get(method, 0.0) + float(value)
    return served


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
