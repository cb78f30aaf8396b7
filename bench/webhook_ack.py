"""The webhook ack benchmark (bench/README.md): the bridge's `POST /webhooks/kommo` against a
bare FastAPI endpoint that only parses the same body, side by side in one run.

What runs: the whole stack as real processes (devstack: Redis with AOF `everysec`, the
Kommo sandbox, the n8n stand-in, the five services, the edge), plus `bench.bare_app`.
Then, after a warm-up of each, closed-loop wrk runs alternate bare / bridge (the order
flips every round so a drift of the machine does not favour one side), then open-loop
runs at a fixed 300 req/s measure latency, then (with py-spy) the edge and the
conversation service are profiled under the same wrk load.

Downstream work: by default (`--downstream paused`) the conversation replica is swapped
for `bench.ingest_only` — the same server, servicer and store without the event consumer
and due-loop — so the figures are the ack and only the ack. `--downstream live` keeps the
real replica: every stored message is then also applied (and turns go to the n8n
stand-in) on the same two cores while wrk hammers the edge.

    make bench                       # = bench/run.sh = python -m bench.webhook_ack
    python -m bench.webhook_ack --rounds 3 --duration 10 --downstream paused
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import profiling
from bench.kommo_body import ENV_VAR, body, body_template
from devstack.processes import ROOT, Process, free_port, http_up
from devstack.stack import Stack, StackConfig, start_stack
from services.conversation.settings import ConversationSettings
from services.conversation.store import event_streams

log = logging.getLogger("bench")

BENCH_DIR = ROOT / "bench"
LUA_SCRIPT = BENCH_DIR / "post.lua"
BAR_RATIO = 1.00  # bridge req/s ≥ 100 % of bare
BAR_P50_MS = 5.0  # at a steady 300 req/s
BAR_P99_MS = 15.0
BAR_MAX_MS = 250.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


# --- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    side: str
    label: str
    requests_per_s: float  # every answer, as wrk counts them
    ok_per_s: float  # 2xx answers only: what the comparison uses
    requests: int
    elapsed_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    cpu_percent: dict[str, float] = field(default_factory=dict)
    raw: str = ""


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, side: str, label: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return match

    percentiles = {
        int(m.group(1)): _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.MULTILINE)
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    done = find(r"^\s+(\d+) requests in ([\d.]+\w+),")
    requests, elapsed_s = int(done.group(1)), _ms(done.group(2)) / 1000
    failed = int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        side=side,
        label=label,
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        ok_per_s=(requests - failed) / elapsed_s,
        requests=requests,
        elapsed_s=elapsed_s,
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        max_ms=_ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)").group(1)),
        non_2xx=failed,
        socket_errors=(
            dict(
                zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
            )
            if errors
            else {}
        ),
        raw=output,
    )


# --- CPU accounting ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used by each watched process (and by waited-for children, i.e. the load
    generator) between start() and stop(), as % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._wall = 0.0

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["load generator"] = children_cpu_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["load generator"] = children_cpu_seconds()
        return {name: round(100 * (now[name] - self._start[name]) / wall, 1) for name in now}


# --- the two sides -----------------------------------------------------------------------


@dataclass
class Side:
    name: str  # "bare" or "bridge"
    url: str
    pids: dict[str, int]


def start_bare(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log_file = (log_dir / "bare_app.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not http_up(f"{url}/webhooks/kommo"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("bench.bare_app did not start: see bare_app.log")
        time.sleep(0.1)
    return process, url


def pause_downstream(stack: Stack) -> Process:
    """Replace the conversation replica by bench.ingest_only on the same port."""
    (original,) = stack.services["conversation"]
    port = original.port
    original.stop()
    replica = stack.launcher.start(
        "conversation-ingest-only",
        "bench.ingest_only",
        {"GRPC_PORT": str(port), "GRPC_HOST": "127.0.0.1"},
        port,
        "grpc",
    )
    stack.services["conversation"] = [replica]
    stack.launcher.wait_ready(replica)
    return replica


def wait_acking(url: str, template: str, timeout: float = 30.0) -> None:
    """Until the edge stores webhooks again (its ingest stream reconnects lazily)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while True:
            answer = client.post(
                url,
                content=body(template, f"warmup-{time.monotonic_ns()}"),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            if answer.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge does not ack: {answer.status_code} {answer.text}")
            time.sleep(0.2)


# --- runs --------------------------------------------------------------------------------


@dataclass
class Settings:
    threads: int
    connections: int
    duration: float
    warmup: float
    rounds: int
    rate: float
    rate_duration: float
    latency_rounds: int
    downstream: str
    profile: bool
    profile_duration: float
    appendfsync: str = "everysec"


def run_wrk(side: Side, settings: Settings, duration: float, label: str) -> WrkResult:
    meter = CpuMeter(side.pids)
    command = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        side.url,
    ]
    meter.start()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, ENV_VAR: body_template()},
    )
    cpu = meter.stop()
    result = parse_wrk(done.stdout, side.name, label)
    result.cpu_percent = cpu
    log.info(
        "%-6s %-8s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  non-2xx %d  cpu %s",
        side.name,
        label,
        result.requests_per_s,
        result.p50_ms,
        result.p99_ms,
        result.non_2xx,
        cpu,
    )
    return result


def run_open_loop(side: Side, settings: Settings, label: str) -> dict[str, Any]:
    meter = CpuMeter(side.pids)
    meter.start()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.openloop",
            "--url",
            side.url,
            "--rate",
            f"{settings.rate:g}",
            "--duration",
            f"{settings.rate_duration:g}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    cpu = meter.stop()
    result: dict[str, Any] = json.loads(done.stdout)
    result.update(side=side.name, label=label, cpu_percent=cpu)
    log.info(
        "%-6s %-8s %4.0f req/s open loop: p50 %.2f ms  p99 %.2f ms  max %.2f ms  statuses %s",
        side.name,
        label,
        settings.rate,
        result["p50_ms"],
        result["p99_ms"],
        result["max_ms"],
        result["statuses"],
    )
    return result


# Every stream webhook events are stored in (partitioned by conversation), at the
# default partition count the bench's stack runs with.
_EVENT_STREAMS = event_streams(ConversationSettings.model_fields["event_partitions"].default)


def _stored(client: redis.Redis) -> int:
    """Webhook events stored and not yet applied, over every partition."""
    return sum(int(client.xlen(stream)) for stream in _EVENT_STREAMS)


def settle(stack: Stack, settings: Settings, drain_timeout: float = 300.0) -> None:
    """Between runs, start the next one from the same state.

    Paused: nothing trims the event stream, so drop what the last run stored (Redis
    memory stays flat). Live: wait until the consumer has applied the backlog, or it
    would keep a core busy during the next run — a bare run included.
    """
    client = redis.Redis.from_url(stack.redis_url)
    try:
        if settings.downstream == "paused":
            for stream in _EVENT_STREAMS:
                client.xtrim(stream, maxlen=0, approximate=False)
        else:
            started = time.monotonic()
            backlog = _stored(client)
            while _stored(client) and time.monotonic() - started < drain_timeout:
                time.sleep(0.5)
            if backlog:
                left = _stored(client)
                log.info(
                    "consumer applied %d of %d stored events in %.1f s",
                    backlog - left,
                    backlog,
                    time.monotonic() - started,
                )
    finally:
        client.close()
    time.sleep(1.0)  # AOF fsync (everysec) and the kernel's socket buffers catch up


# --- profiling ---------------------------------------------------------------------------


def profile(stack: Stack, bridge: Side, settings: Settings, out_dir: Path) -> dict[str, Any] | None:
    """py-spy on the edge and the conversation service during one more wrk run."""
    spy = profiling.py_spy()
    if spy is None:
        log.warning("py-spy not found (.venv/bin/pip install py-spy): no profile")
        return None
    targets = {
        "edge_api": stack.services["edge_api"][0].popen.pid,
        "conversation": stack.services["conversation"][0].popen.pid,
    }
    duration = settings.profile_duration
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # wrk starts first and runs past the sampling window on both sides.
        load = pool.submit(run_wrk, bridge, settings, duration + 3, "profiled")
        time.sleep(1.0)
        spies = {
            name: profiling.record(spy, pid, duration, out_dir / f"profile-{name}.txt")
            for name, pid in targets.items()
        }
        failures = {}
        for name, process in spies.items():
            _, err = process.communicate(timeout=duration + 60)
            if process.returncode != 0:
                failures[name] = err.decode(errors="replace")[-2000:]
        loaded = load.result()
    report: dict[str, Any] = {
        "duration_s": duration,
        "load": {
            "requests_per_s": loaded.requests_per_s,
            "non_2xx": loaded.non_2xx,
            "cpu_percent": loaded.cpu_percent,
        },
        "failures": failures,
    }
    for name in targets:
        path = out_dir / f"profile-{name}.txt"
        if path.exists():
            report[name] = profiling.summarize(path.read_text())
    return report


def profile_markdown(profiled: dict[str, Any]) -> str:
    load = profiled["load"]
    lines = [
        "",
        f"### Profile of the bridge under wrk ({load['requests_per_s']:,.0f} req/s while sampled)",
        "",
    ]
    for name in ("edge_api", "conversation"):
        if name in profiled:
            lines.append(profiling.markdown(name, profiled[name]))
        else:
            lines += [f"{name}: no profile: {profiled['failures'].get(name, '?')[:300]}", ""]
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(wrk_runs: list[WrkResult], open_runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for side in ("bare", "bridge"):
        runs = [r for r in wrk_runs if r.side == side and r.label.startswith("round")]
        opens = [r for r in open_runs if r["side"] == side]
        summary[side] = {
            "requests_per_s": _median([r.requests_per_s for r in runs]),
            "ok_per_s": _median([r.ok_per_s for r in runs]),
            "p50_ms": _median([r.p50_ms for r in runs]),
            "p99_ms": _median([r.p99_ms for r in runs]),
            "non_2xx": sum(r.non_2xx for r in runs),
            "cpu_percent": {
                name: _median([r.cpu_percent[name] for r in runs])
                for name in (runs[0].cpu_percent if runs else {})
            },
            "open_loop": {
                # The worst of the rounds: the bar is about every run, not a lucky one.
                "p50_ms": max((r["p50_ms"] for r in opens), default=float("nan")),
                "p99_ms": max((r["p99_ms"] for r in opens), default=float("nan")),
                "max_ms": max((r["max_ms"] for r in opens), default=float("nan")),
                "non_2xx": sum(
                    n for r in opens for s, n in r["statuses"].items() if not s.startswith("2")
                ),
                "errors": sum(sum(r["errors"].values()) for r in opens),
            },
        }
    bare, bridge = summary["bare"], summary["bridge"]
    # 2xx answers only: a fast 503 must not count as throughput.
    summary["ratio"] = bridge["ok_per_s"] / bare["ok_per_s"]
    pairs = [
        (a.ok_per_s, b.ok_per_s)
        for a, b in zip(
            [r for r in wrk_runs if r.side == "bare" and r.label.startswith("round")],
            [r for r in wrk_runs if r.side == "bridge" and r.label.startswith("round")],
            strict=True,
        )
    ]
    summary["ratio_per_round"] = [round(b / a, 3) for a, b in pairs]
    opened = bridge["open_loop"]
    summary["bar"] = {
        "throughput >= 100 % of bare": summary["ratio"] >= BAR_RATIO,
        f"p50 <= {BAR_P50_MS:g} ms at the fixed rate": opened["p50_ms"] <= BAR_P50_MS,
        f"p99 <= {BAR_P99_MS:g} ms at the fixed rate": opened["p99_ms"] <= BAR_P99_MS,
        f"max <= {BAR_MAX_MS:g} ms at the fixed rate": opened["max_ms"] <= BAR_MAX_MS,
        "no non-2xx answers": bridge["non_2xx"] == 0 and opened["non_2xx"] == 0,
    }
    return summary


def markdown(summary: dict[str, Any], settings: Settings, machine: dict[str, Any]) -> str:
    bare, bridge = summary["bare"], summary["bridge"]
    ob, og = bare["open_loop"], bridge["open_loop"]
    lines = [
        f"### Webhook ack — {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"downstream {settings.downstream}, appendfsync {settings.appendfsync}",
        "",
        f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration:g}s, "
        f"{settings.rounds} alternating rounds (medians); open loop {settings.rate:g} req/s "
        f"× {settings.rate_duration:g} s, {settings.latency_rounds} rounds (worst).",
        "",
        "| | bare FastAPI + parse_qsl | bridge (durable ack) | bridge / bare |",
        "|---|---:|---:|---:|",
        f"| 2xx req/s | {bare['ok_per_s']:,.0f} | {bridge['ok_per_s']:,.0f} "
        f"| **{100 * summary['ratio']:.0f} %** |",
        f"| all answers req/s | {bare['requests_per_s']:,.0f} | {bridge['requests_per_s']:,.0f} "
        f"| {bridge['requests_per_s'] / bare['requests_per_s']:.2f} |",
        f"| p50 (wrk) | {bare['p50_ms']:.2f} ms | {bridge['p50_ms']:.2f} ms "
        f"| {bridge['p50_ms'] / bare['p50_ms']:.2f} |",
        f"| p99 (wrk) | {bare['p99_ms']:.2f} ms | {bridge['p99_ms']:.2f} ms "
        f"| {bridge['p99_ms'] / bare['p99_ms']:.2f} |",
        f"| non-2xx (all rounds) | {bare['non_2xx']} | {bridge['non_2xx']} | |",
        f"| {settings.rate:g} req/s p50 | {ob['p50_ms']:.2f} ms | {og['p50_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s p99 | {ob['p99_ms']:.2f} ms | {og['p99_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s max | {ob['max_ms']:.2f} ms | {og['max_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s non-2xx / errors | {ob['non_2xx']} / {ob['errors']} "
        f"| {og['non_2xx']} / {og['errors']} | |",
        "",
        "Ratio per round: " + ", ".join(f"{100 * r:.0f} %" for r in summary["ratio_per_round"]),
        "",
        "CPU under wrk (% of one core, medians): bare "
        + ", ".join(f"{k} {v:.0f}" for k, v in bare["cpu_percent"].items())
        + "; bridge "
        + ", ".join(f"{k} {v:.0f}" for k, v in bridge["cpu_percent"].items()),
        "",
        "The bar (bench/README.md):",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in summary["bar"].items()]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.splitlines()[0] if wrk_version else "",
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description="webhook ack: bridge vs bare FastAPI")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds (>= 2)")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop req/s")
    parser.add_argument("--rate-duration", type=float, default=10.0)
    parser.add_argument("--latency-rounds", type=int, default=2)
    parser.add_argument("--downstream", choices=("paused", "live"), default="paused")
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the py-spy run"
    )
    parser.add_argument("--profile-duration", type=float, default=15.0)
    parser.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default="everysec",
        help="Redis AOF fsync policy for the run (make run and compose ship everysec)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the sides alternate")
    return Settings(**vars(args))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # httpx logs every readiness probe at INFO: noise between the figures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = parse_args(argv)
    if shutil.which("wrk") is None:
        log.error("wrk is not on PATH: run bench/run.sh (make bench), which installs it")
        return 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = BENCH_DIR / "results"
    out_dir = results_dir / f"webhook_ack-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    template = body_template()
    bare_process: subprocess.Popen[bytes] | None = None
    stack: Stack | None = None
    try:
        log.info("starting the stack (logs in %s)", work)
        stack = start_stack(StackConfig(log_dir=work, env={"LOG_LEVEL": "WARNING"}))
        redis.Redis.from_url(stack.redis_url).config_set("appendfsync", settings.appendfsync)
        log.info("redis appendfsync %s", settings.appendfsync)
        if settings.downstream == "paused":
            pause_downstream(stack)
        wait_acking(stack.webhook_url, template)
        bare_process, bare_url = start_bare(work)
        assert stack.redis is not None and stack.redis.process is not None
        bridge_pids = {
            "edge_api": stack.services["edge_api"][0].popen.pid,
            "conversation": stack.services["conversation"][0].popen.pid,
            "redis": stack.redis.process.pid,
        }
        # The secret is ignored by the bare app: same URL shape, same request bytes.
        bare = Side("bare", f"{bare_url}/webhooks/kommo?secret={stack.webhook_secret}", {
            "bare_app": bare_process.pid
        })  # fmt: skip
        bridge = Side("bridge", stack.webhook_url, bridge_pids)

        wrk_runs: list[WrkResult] = []
        for side in (bare, bridge):
            wrk_runs.append(run_wrk(side, settings, settings.warmup, "warm-up"))
            settle(stack, settings)
        for round_no in range(settings.rounds):
            order = (bare, bridge) if round_no % 2 == 0 else (bridge, bare)
            for side in order:
                wrk_runs.append(run_wrk(side, settings, settings.duration, f"round {round_no + 1}"))
                settle(stack, settings)
        open_runs: list[dict[str, Any]] = []
        for round_no in range(settings.latency_rounds):
            order = (bare, bridge) if round_no % 2 == 0 else (bridge, bare)
            for side in order:
                open_runs.append(run_open_loop(side, settings, f"round {round_no + 1}"))
                settle(stack, settings)
        profiled = profile(stack, bridge, settings, out_dir) if settings.profile else None

        machine = machine_info()
        summary = summarize(wrk_runs, open_runs)
        table = markdown(summary, settings, machine)
        report = {
            "benchmark": "webhook_ack",
            "when": stamp,
            "machine": machine,
            "settings": asdict(settings),
            "summary": summary,
            "wrk_runs": [asdict(r) for r in wrk_runs],
            "open_loop_runs": open_runs,
            "profile": profiled,
        }
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "summary.md").write_text(table)
        (results_dir / "webhook_ack-latest.json").write_text(json.dumps(report, indent=2) + "\n")
        sys.stdout.write(table)
        if profiled is not None:
            sys.stdout.write(profile_markdown(profiled))
        sys.stdout.write(f"\nresults: {out_dir.relative_to(ROOT)}/\n")
        return 0
    finally:
        if bare_process is not None:
            bare_process.send_signal(signal.SIGTERM)
            bare_process.wait(10)
        if stack is not None:
            stack.stop()
            for log_file in work.glob("*.log"):
                shutil.copy(log_file, out_dir / log_file.name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
