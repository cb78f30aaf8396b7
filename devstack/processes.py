"""Starting the bridge's processes: every service (with replicas), the Kommo sandbox
and the n8n stand-in. Shared by `make run`, the end-to-end tests and the benchmarks,
so what the tests exercise is exactly what a user runs."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GRPC_SERVICES = ("kommo_gateway", "vendedor", "scheduling", "conversation")
_HEALTH_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0


_handed_out: set[int] = set()


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

    def start(self, name: str, module: str, env: dict[str, str], port: int, kind: str) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.base_env, **env, "PYTHONPATH": str(ROOT)}
        handle = log_path.open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            env=full_env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        process = Process(name, port, popen, log_path, kind)
        self.processes.append(process)
        return process

    def wait_ready(self, process: Process, path: str = "/") -> None:
        deadline = time.monotonic() + _HEALTH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited ({process.popen.returncode}):\n{process.log()[-3000:]}"
                )
            ready = (
                grpc_serving(process.address)
                if process.kind == "grpc"
                else http_up(f"http://{process.address}{path}")
            )
            if ready:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{process.name} not ready in time:\n{process.log()[-3000:]}")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.popen.wait(_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        self.processes.clear()
