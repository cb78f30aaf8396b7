"""Starting the bridge's processes: every service (with replicas), the Kommo sandbox
and the n8n stand-in. Shared by `make run`, the end-to-end tests and the benchmarks,
so what the tests exercise is exactly what a user runs."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GRPC_SERVICES = ("kommo_gateway", "vendedor", "scheduling", "conversation")
_HEALTH_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("devstack")


_handed_out: set[int] = set()


class StartupError(RuntimeError):
    """A process of the stack did not come up. The message ends with the tail of its log
    (what a test wants to see); `summary()` is the one line `make run` prints."""

    def __init__(self, process: Process, reason: str) -> None:
        super().__init__(f"{process.name} {reason}:\n{process.log()[-3000:]}")
        self.process = process
        self.reason = reason

    def summary(self) -> str:
        last = last_log_message(self.process.log())
        said = f": {last}" if last else ""
        return f"{self.process.name} {self.reason}{said} (log: {self.process.log_path})"


class PortInUse(RuntimeError):
    """A port the stack must use exactly is taken by another program."""

    def __init__(self, port: int, what: str, variable: str) -> None:
        super().__init__(f"port {port} ({what}) is already in use: set {variable} to another port")
        self.port = port
        self.variable = variable


def last_log_message(text: str) -> str:
    """The last thing a process said: the message of its last JSON log line, or its last
    plain line (a traceback's exception, a configuration error)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if isinstance(entry, dict) and entry.get("message"):
            return str(entry["message"])
        return line
    return ""


def port_in_use(port: int) -> bool:
    """Whether some program listens on `port` (on 127.0.0.1 or every address).

    SO_REUSEADDR as servers set it: the connections of a stack stopped a moment ago,
    still in TIME_WAIT, do not count — only a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def reserve_port(port: int) -> bool:
    """Take a given port for a process about to start, if nothing listens on it; never
    handed out by `free_port` afterwards."""
    if port in _handed_out or port_in_use(port):
        return False
    _handed_out.add(port)
    return True


@functools.cache
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, for a process about to start.

    Not from the kernel's ephemeral range (bind to port 0): between this call and the
    process binding it, that port may be given to an outgoing connection or to the next
    call here, and a service then dies with "address already in use" (seen in CI). Ports
    below the ephemeral range are never used for outgoing connections, and this process
    never hands the same one out twice.
    """
    low = min(_ephemeral_low(), 65536)
    candidates = range(20000, low) if low - 20000 >= 1000 else range(1024, 65536)
    for _ in range(200):
        port = random.choice(candidates)  # noqa: S311 - not a secret
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    kind: str  # "grpc" or "http"
    metrics_port: int = 0
    # What `Launcher.relaunch` needs to start the same process again.
    module: str = ""
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = _STOP_TIMEOUT_SECONDS) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def describe_exit(code: int | None) -> str:
    """`exit code 3`, or `killed by SIGKILL` for a process ended by a signal."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def http_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


@dataclass
class Launcher:
    """Starts processes with logs in `log_dir` and stops them all, in reverse order."""

    log_dir: Path
    base_env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    def start(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        port: int,
        kind: str,
        ready_path: str = "/",
    ) -> Process:
        popen, log_path = self._spawn(name, module, env)
        process = Process(
            name, port, popen, log_path, kind, module=module, env=env, ready_path=ready_path
        )
        self.processes.append(process)
        return process

    def relaunch(self, process: Process) -> Process:
        """Start an exited process again: same module, settings, port and log file. It
        takes the old one's place (and so its place in the stopping order)."""
        if process.alive():
            raise RuntimeError(f"{process.name} is still running")
        popen, log_path = self._spawn(process.name, process.module, process.env)
        fresh = dataclasses.replace(process, popen=popen, log_path=log_path)
        self.processes[self.processes.index(process)] = fresh
        return fresh

    def _spawn(
        self, name: str, module: str, env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.base_env, **env, "PYTHONPATH": str(ROOT)}
        with log_path.open("ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", module],
                env=full_env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                # A group of its own: a terminal's Ctrl-C reaches only the runner, which
                # stops the processes in order (Launcher.stop_all).
                process_group=0,
            )
        return popen, log_path

    @staticmethod
    def ready(process: Process) -> bool:
        """One readiness probe: gRPC health SERVING, or an HTTP answer below 500."""
        if process.kind == "grpc":
            return grpc_serving(process.address)
        return http_up(f"http://{process.address}{process.ready_path}")

    def wait_ready(self, process: Process, path: str | None = None) -> None:
        if path is not None:
            process.ready_path = path
        deadline = time.monotonic() + _HEALTH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not process.alive():
                code = process.popen.returncode
                raise StartupError(process, f"exited during start-up ({describe_exit(code)})")
            if self.ready(process):
                return
            time.sleep(0.1)
        raise StartupError(process, f"did not answer within {_HEALTH_TIMEOUT_SECONDS:.0f} s")

    def stop_all(self, tiers: Sequence[Sequence[Process]] = ()) -> None:
        """Stop every process, tier by tier: each tier's processes together (SIGTERM,
        then a wait), and the next tier only once they are gone, so nothing outlives
        what it depends on. What no tier names goes last, newest first."""
        named = {id(p) for tier in tiers for p in tier}
        rest = [p for p in reversed(self.processes) if id(p) not in named]
        for tier in [*tiers, *([rest] if rest else [])]:
            stop_together(tier)
        self.processes.clear()


def stop_together(processes: Sequence[Process]) -> None:
    for process in processes:
        process.signal(signal.SIGTERM)
    for process in processes:
        try:
            process.popen.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
        log.info("stopped %s", process.name)
