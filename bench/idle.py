"""What the stack costs doing nothing (`bench/run.sh idle`, not part of `make bench`).

Starts the whole stack exactly as `make run` does (`python -m devstack`: its own Redis
with AOF, the Kommo sandbox, the n8n stand-in, the edge and the four gRPC services, each
supervised), in a state folder of its own (`--clean`, no `.env`: the sandbox), lets it
settle, then sends it no traffic at all for a while (60 s) and measures:

- **Redis commands per second**, from Redis's own view: `INFO commandstats` before and
  after, the difference per command, minus the benchmark's own `INFO` call;
- **CPU**, per process of the stack (the runner, Redis, the sandbox, the stand-in, every
  replica of every service): utime + stime from /proc/<pid>/stat before and after, as a
  percentage of one core over the window.

    python -m bench.idle [--seconds 60] [--settle 15] [--scale conversation=2 …]
                         [--env NAME=VALUE …] [--json FILE]

Prints per-process CPU %, the total, and the commands per second by command; exits 0
when the bar holds (total CPU ≤ 2 % of one core, Redis ≤ 5 commands/s), else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from devstack.processes import ROOT, GRPC_SERVICES, free_port

BAR_CPU_PERCENT = 2.0
BAR_REDIS_PER_SECOND = 5.0
_READY = "bridge is running"
_START_TIMEOUT_SECONDS = 180.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Settings the runner passes on from the environment: none of the caller's may leak in.
_PASSED_PREFIXES = ("KOMMO_", "N8N_", "EDGE_", "BOT_", "MESSAGE_", "REDIS_", "PROACTIVE_")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh idle", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the idle window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before it")
    parser.add_argument(
        "--scale", action="append", default=[], metavar="SERVICE=N", help="replicas"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(root: int) -> list[int]:
    tree = _children()
    found, todo = [root], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def label(pid: int) -> str:
    """The stack's name for a process: its module (and replica port), or redis-server."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    args = [a.decode(errors="replace") for a in argv if a]
    env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    if args and "redis-server" in args[0]:
        return "redis-server"
    if "-m" in args:
        module = args[args.index("-m") + 1]
        name = module.removeprefix("services.")
        if module == "devstack":
            return "devstack (runner)"
        port = env.get("GRPC_PORT") or env.get("EDGE_PORT") or ""
        for variable in ("SANDBOX_PORT", "STANDIN_PORT"):
            if module.startswith(("sandbox", "devstack.")) and env.get(variable):
                port = env[variable]
        return f"{name}:{port}" if port else name
    return " ".join(args)[:60] or f"pid {pid}"


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls by command, as Redis counts them: a command a script runs counts too."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def start(args: argparse.Namespace, state: Path) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PASSED_PREFIXES)}
    env.pop("RUN_STATE_DIR", None)
    for name in GRPC_SERVICES:
        env.pop(f"SCALE_{name.upper()}", None)
    env["EDGE_PORT"] = str(free_port())
    for item in args.scale:
        service, _, count = item.partition("=")
        env[f"SCALE_{service.upper()}"] = count
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    empty = state / "empty.env"
    empty.write_text("")
    runner = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--clean", "--state-dir", str(state / "run"),
         "--env-file", str(empty)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert runner.stdout is not None
        for line in runner.stdout:
            lines.append(line.rstrip())
            if _READY in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not ready.wait(0.5):
        if runner.poll() is not None or time.monotonic() > deadline:
            stop(runner)
            raise SystemExit("idle: the stack did not start:\n" + "\n".join(lines[-30:]))
    return runner, lines


def stop(runner: subprocess.Popen[str]) -> None:
    if runner.poll() is None:
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        state = Path(tmp)
        runner, _ = start(args, state)
        try:
            saved = json.loads((state / "run" / "state.json").read_text())
            client = redis.Redis(
                host="127.0.0.1", port=int(saved["ports"]["redis"]),
                password=saved["redis_password"],
            )
            client.ping()
            print(f"idle: stack up, settling {args.settle:.0f} s", file=sys.stderr, flush=True)
            time.sleep(args.settle)
            pids = descendants(runner.pid)
            names = {pid: label(pid) for pid in pids}
            before_cpu = {pid: cpu_ticks(pid) for pid in pids}
            began = time.monotonic()
            before = commandstats(client)
            print(f"idle: measuring {args.seconds:.0f} s", file=sys.stderr, flush=True)
            time.sleep(args.seconds)
            after = commandstats(client)
            elapsed = time.monotonic() - began
            after_cpu = {pid: cpu_ticks(pid) for pid in pids}
            restarted = sorted(set(descendants(runner.pid)) - set(pids))
            client.close()
        finally:
            stop(runner)
    calls = {cmd: after.get(cmd, 0) - before.get(cmd, 0) for cmd in after}
    calls["info"] = calls.get("info", 0) - 1  # the first snapshot's own INFO
    calls = {cmd: n for cmd, n in calls.items() if n > 0}
    cpu: dict[str, float] = {}
    for pid in pids:
        first, last = before_cpu[pid], after_cpu[pid]
        if first is None or last is None:
            continue
        name = names[pid]
        cpu[name] = cpu.get(name, 0.0) + 100.0 * (last - first) / _CLK_TCK / elapsed
    total_calls = sum(calls.values())
    return {
        "seconds": round(elapsed, 2),
        "scale": args.scale,
        "env": args.env,
        "cpu_percent": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "cpu_percent_total": round(sum(cpu.values()), 3),
        "redis_calls": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "redis_per_second": round(total_calls / elapsed, 3),
        "processes_started_during_the_window": len(restarted),
    }


def report(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    lines = [f"Idle for {seconds:.1f} s (no traffic)", "", "CPU, % of one core:"]
    for name, percent in result["cpu_percent"].items():
        lines.append(f"  {percent:7.3f}  {name}")
    lines.append(f"  {result['cpu_percent_total']:7.3f}  total (bar ≤ {BAR_CPU_PERCENT})")
    lines += ["", "Redis commands (from INFO commandstats, the benchmark's own INFO removed):"]
    for command, count in result["redis_calls"].items():
        lines.append(f"  {count / seconds:8.3f}/s  {count:7d}  {command}")
    lines.append(
        f"  {result['redis_per_second']:8.3f}/s  total (bar ≤ {BAR_REDIS_PER_SECOND}/s)"
    )
    if result["processes_started_during_the_window"]:
        lines.append(
            f"\nWARNING: {result['processes_started_during_the_window']} processes started "
            "during the window (a restart?): their CPU is not counted"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    held = (
        result["cpu_percent_total"] <= BAR_CPU_PERCENT
        and result["redis_per_second"] <= BAR_REDIS_PER_SECOND
    )
    print(f"\nbar: {'held' if held else 'NOT held'}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
