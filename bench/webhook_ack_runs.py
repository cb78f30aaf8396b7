"""The runs of the webhook ack benchmark (bench/webhook_ack.py), each against one side
(the bare app or the bridge): closed-loop wrk, the open-loop generator at a fixed rate,
what is done between runs so each starts from the same state, and the py-spy profile of
the bridge under wrk."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import profiling
from bench.cpu_meter import CpuMeter
from bench.kommo_body import ENV_VAR, body_template
from bench.wrk import WrkResult, parse_wrk
from devstack.processes import ROOT
from devstack.stack import Stack
from services.conversation.settings import ConversationSettings
from services.conversation.store import event_streams

log = logging.getLogger("bench")

BENCH_DIR = ROOT / "bench"
LUA_SCRIPT = BENCH_DIR / "post.lua"


# --- runs --------------------------------------------------------------------------------


@dataclass
class Side:
    name: str  # "bare" or "bridge"
    url: str
    pids: dict[str, int]


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
