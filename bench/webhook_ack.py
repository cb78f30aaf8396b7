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

Here: the two sides started, and the whole run in order (`main`). Each run against a side
is in `webhook_ack_runs.py`, the summary, the bar and the table in `webhook_ack_report.py`;
wrk's output is read by `wrk.py`, the CPU of each process measured by `cpu_meter.py`.

    make bench                       # = bench/run.sh = python -m bench.webhook_ack
    python -m bench.webhook_ack --rounds 3 --duration 10 --downstream paused
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.kommo_body import body, body_template
from bench.webhook_ack_report import machine_info, markdown, profile_markdown, summarize
from bench.webhook_ack_runs import (
    BENCH_DIR,
    Settings,
    Side,
    profile,
    run_open_loop,
    run_wrk,
    settle,
)
from bench.wrk import WrkResult
from devstack.processes import ROOT, Process, free_port, http_up
from devstack.stack import Stack, StackConfig, start_stack

log = logging.getLogger("bench")


# --- the two sides -----------------------------------------------------------------------


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
