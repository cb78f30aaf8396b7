"""`make run` as a user runs it: `python -m devstack` as a real process, with a state
folder of its own. It keeps its Redis data, key and ports from one run to the next,
starts clean on request, brings a killed Redis back, and refuses a taken port in one line
before any banner."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import redis

from devstack.processes import ROOT, free_port
from devstack.state import RunState, StateDir
from tests.e2e.conftest import wait_for

# Variables the runner reads: the tests set their own, never the developer's.
_RUNNER_PREFIXES = (
    "KOMMO_", "N8N_", "EDGE_", "BOT_", "MESSAGE_", "REDIS_", "PROACTIVE_", "SCALE_", "RUN_",
    "SANDBOX_", "STANDIN_",
)  # fmt: skip
_START_TIMEOUT = 60.0
_BANNER = "bridge is running"


class Runner:
    """One `python -m devstack` process; what it prints goes to a file."""

    def __init__(self, work: Path, state_dir: Path, env: dict[str, str], *args: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        env_file = work / "empty.env"
        env_file.touch()
        self.output_path = work / f"runner-{len(list(work.glob('runner-*')))}.out"
        base = {k: v for k, v in os.environ.items() if not k.startswith(_RUNNER_PREFIXES)}
        with self.output_path.open("wb") as output:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "devstack", "--state-dir", str(state_dir),
                 "--env-file", str(env_file), *args],
                cwd=ROOT,
                env={**base, "MESSAGE_DEBOUNCE_SECONDS": "0", **env},
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group, as a shell gives a foreground job: Ctrl-C in a
                # terminal signals the whole group (`ctrl_c_in_a_terminal`).
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for_output(self, text: str) -> str:
        def said() -> str | None:
            if text in self.output():
                return self.output()
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"the runner exited ({self.popen.returncode}):\n{self.output()}"
                )
            return None

        return wait_for(said, _START_TIMEOUT, f"{text!r} from the runner")

    def banner_value(self, label: str) -> str:
        match = re.search(rf"^\s+{re.escape(label)}\s+(\S+)", self.output(), re.MULTILINE)
        assert match, f"no {label!r} in the banner:\n{self.output()}"
        return match.group(1)

    def exit_code(self) -> int:
        return self.popen.wait(_START_TIMEOUT)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        return self.exit_code()

    def ctrl_c_in_a_terminal(self) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to every process of the foreground
        group, the runner and whatever it started in that group."""
        os.killpg(self.popen.pid, signal.SIGINT)
        return self.exit_code()


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        if runner.popen.poll() is None:
            runner.popen.send_signal(signal.SIGINT)
            try:
                runner.popen.wait(_START_TIMEOUT)
            except subprocess.TimeoutExpired:
                runner.popen.kill()
                runner.popen.wait()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def start(
    runners: list[Runner],
    tmp_path: Path,
    state_dir: Path,
    env: dict[str, str] | None = None,
    *args: str,
) -> Runner:
    runner = Runner(tmp_path / "work", state_dir, env or {}, *args)
    runners.append(runner)
    runner.wait_for_output(_BANNER)
    return runner


def customer_gets_a_reply(runner: Runner, text: str) -> None:
    sandbox = runner.banner_value("Kommo sandbox")
    with httpx.Client(timeout=10.0) as http:
        http.post(
            f"{sandbox}/_sandbox/customer-message", json={"lead_id": 9100001, "text": text}
        ).raise_for_status()

        def replied() -> bool:
            chat = http.get(f"{sandbox}/_sandbox/chats/9100001").json()
            return any(m["direction"] == "outgoing" and text in m["text"] for m in chat)

        wait_for(replied, 30.0, f"the bot's answer to {text!r}")


def test_make_run_keeps_its_redis_data_key_and_ports_until_a_clean_start(
    runners: list[Runner], tmp_path: Path, state_dir: Path
) -> None:
    edge_port = free_port()
    first = start(runners, tmp_path, state_dir, {"EDGE_PORT": str(edge_port)})
    key, redis_url = first.banner_value("X-API-Key"), first.banner_value("redis")
    n8n_key = first.banner_value("n8n's key")
    assert n8n_key != key
    sandbox, webhook = first.banner_value("Kommo sandbox"), first.banner_value("Kommo webhook")
    assert first.banner_value("edge") == f"http://127.0.0.1:{edge_port}"
    assert f"state       {state_dir}" in first.output()
    customer_gets_a_reply(first, "Oi, primeira vez")
    redis.Redis.from_url(redis_url).set("devstack-test:kept", "across runs")
    assert stat.S_IMODE((state_dir / "state.json").stat().st_mode) == 0o600
    assert first.stop() == 0

    # No EDGE_PORT this time: the port, like everything else, is the one remembered.
    second = start(runners, tmp_path, state_dir)
    assert second.banner_value("X-API-Key") == key
    assert second.banner_value("n8n's key") == n8n_key
    assert second.banner_value("edge") == f"http://127.0.0.1:{edge_port}"
    assert second.banner_value("redis") == redis_url
    assert second.banner_value("Kommo sandbox") == sandbox
    assert second.banner_value("Kommo webhook") == webhook
    assert redis.Redis.from_url(redis_url).get("devstack-test:kept") == b"across runs"
    # The bridge still talks to Kommo (here a new sandbox) and answers the customer.
    customer_gets_a_reply(second, "Oi de novo")
    assert second.stop() == 0

    clean = start(runners, tmp_path, state_dir, {"EDGE_PORT": str(free_port())}, "--clean")
    assert "clean start" in clean.output()
    assert clean.banner_value("X-API-Key") != key
    assert clean.banner_value("Kommo webhook") != webhook
    fresh = redis.Redis.from_url(clean.banner_value("redis"))
    assert fresh.get("devstack-test:kept") is None
    assert clean.stop() == 0


def test_redis_killed_under_the_runner_is_restarted_on_its_data(
    runners: list[Runner], tmp_path: Path, state_dir: Path
) -> None:
    runner = start(runners, tmp_path, state_dir, {"EDGE_PORT": str(free_port())})
    client = redis.Redis.from_url(runner.banner_value("redis"))
    client.set("devstack-test:acked", "before the crash")
    os.kill(int(client.info()["process_id"]), signal.SIGKILL)

    output = runner.wait_for_output("redis is back")
    assert re.search(r"^ERROR: redis died \(killed by SIGKILL\): restarting it", output, re.M)
    assert client.get("devstack-test:acked") == b"before the crash"
    customer_gets_a_reply(runner, "Oi depois da queda")
    assert runner.stop() == 0


def test_ctrl_c_stops_the_services_before_what_they_depend_on(
    runners: list[Runner], tmp_path: Path, state_dir: Path
) -> None:
    runner = start(runners, tmp_path, state_dir, {"EDGE_PORT": str(free_port())})
    customer_gets_a_reply(runner, "Oi antes do Ctrl-C")
    logs = Path(runner.banner_value("logs"))
    before = {log.name: log.stat().st_size for log in logs.glob("*.log")}

    assert runner.ctrl_c_in_a_terminal() == 0

    # The services stop first (edge, then the gRPC services), then the sandbox and the
    # stand-in, then Redis: none of them is left retrying something already gone.
    stopped = [line for line in runner.output().splitlines() if line.startswith("stopped ")]
    assert stopped, runner.output()
    order = [line.split()[1] for line in stopped]
    assert order.index("edge_api") < order.index("kommo_gateway-1")
    assert order.index("kommo_gateway-1") < order.index("kommo-sandbox") < order.index("redis")
    for log in sorted(logs.glob("*.log")):
        after_ctrl_c = log.read_bytes()[before.get(log.name, 0) :].decode(errors="replace")
        for alarm in ("onnection refused", "Error 111", "ConnectionError", "Traceback"):
            assert alarm not in after_ctrl_c, f"{log.name} after Ctrl-C:\n{after_ctrl_c}"


@pytest.mark.parametrize("how", ["EDGE_PORT", "SANDBOX_PORT remembered"])
def test_a_port_in_use_is_one_line_naming_its_variable_and_no_banner(
    runners: list[Runner], tmp_path: Path, state_dir: Path, how: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if how == "EDGE_PORT":
            env, what, variable = {"EDGE_PORT": str(port)}, "the edge API", "EDGE_PORT"
        else:
            StateDir(state_dir).save(RunState(ports={"sandbox": port}))
            env = {"EDGE_PORT": str(free_port())}
            what, variable = "the Kommo sandbox", "SANDBOX_PORT"
        runner = Runner(tmp_path / "work", state_dir, env)
        runners.append(runner)
        assert runner.exit_code() != 0
    output = runner.output()
    assert output.strip() == (
        f"ERROR: port {port} ({what}) is already in use: set {variable} to another port"
    )
    assert _BANNER not in output


def test_a_service_failing_at_start_up_is_one_line_with_its_log_and_no_banner(
    runners: list[Runner], tmp_path: Path, state_dir: Path
) -> None:
    env = {"EDGE_PORT": str(free_port()), "KOMMO_RATE_LIMIT_RPS": "many"}
    runner = Runner(tmp_path / "work", state_dir, env)
    runners.append(runner)
    assert runner.exit_code() != 0
    output = runner.output()
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, output
    assert errors[0].startswith("ERROR: kommo_gateway-1 exited during start-up")
    assert "KOMMO_RATE_LIMIT_RPS" in errors[0]
    log_path = Path(errors[0].rsplit("(log: ", 1)[1].rstrip(")"))
    assert log_path.is_file()
    assert _BANNER not in output
    assert "Traceback" not in output


class _N8nDouble(http.server.BaseHTTPRequestHandler):
    """Stands for a real n8n the user configured: records each envelope, answers 200."""

    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_a_configured_n8n_gets_the_envelopes_and_no_stand_in_is_started(
    runners: list[Runner], tmp_path: Path, state_dir: Path
) -> None:
    _N8nDouble.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _N8nDouble)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    n8n_url = f"http://127.0.0.1:{server.server_address[1]}/webhook/kommo-bridge"
    try:
        runner = start(runners, tmp_path, state_dir, {"N8N_WEBHOOK_URL": n8n_url})
        output = runner.output()
        assert "STAND-IN" not in output and "n8n stand-in" not in output
        assert runner.banner_value("n8n") == n8n_url
        sandbox = runner.banner_value("Kommo sandbox")
        httpx.post(
            f"{sandbox}/_sandbox/customer-message",
            json={"lead_id": 9100001, "text": "Oi, n8n de verdade?"},
            timeout=10.0,
        ).raise_for_status()
        envelope = wait_for(
            lambda: next(iter(_N8nDouble.received), None), 30.0, "the envelope at n8n"
        )
        assert envelope["event"] == "message.received"
        logs = runner.banner_value("logs")
        assert not list(Path(logs).glob("n8n-standin*.log"))
    finally:
        server.shutdown()
        server.server_close()
