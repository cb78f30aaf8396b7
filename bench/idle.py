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

import httpx
import redis

from bench.work_counter import socket_owners
from devstack.processes import GRPC_SERVICES, ROOT, free_port
from sandbox.kommo.ids import FIRST_LEAD_ID

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
    parser.add_argument(
        "--after-traffic",
        action="store_true",
        help="a customer writes and gets the bot's answer first (what starts on first use "
        "then runs on: the gateway's dispatch lease, caches…), then the stack is idle",
    )
    parser.add_argument(
        "--no-monitor",
        dest="monitor",
        action="store_false",
        help="skip MONITOR (which tells the commands sent from those scripts run, and who "
        "sent them, at a small cost to Redis's CPU)",
    )
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


class Monitor(threading.Thread):
    """Every command Redis runs, as MONITOR shows it: who sent it (a client's port) or a
    script ("lua"), and when (Redis's clock). What separates the commands clients send
    from those their scripts run, which INFO counts alike."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.seen: list[tuple[float, str, str]] = []  # (time, port or "lua", command)
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
                self.ready.set()
                while True:
                    line = monitor.next_command()
                    if line is None:
                        continue
                    name = str(line["command"]).split(" ", 1)[0].lower()
                    who = "lua" if line["client_type"] == "lua" else str(line["client_port"])
                    self.seen.append((float(line["time"]), who, name))
        except Exception:  # the stack stopped: the connection is gone
            self.ready.set()


def one_reply(sandbox: str) -> None:
    """A customer of the sandbox writes; back when the bot's answer is in the chat."""
    text = f"idle-bench {time.time():.0f}"
    with httpx.Client(timeout=10.0) as http:
        http.post(
            f"{sandbox}/_sandbox/customer-message", json={"lead_id": FIRST_LEAD_ID, "text": text}
        ).raise_for_status()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chat = http.get(f"{sandbox}/_sandbox/chats/{FIRST_LEAD_ID}").json()
            if any(m["direction"] == "outgoing" and text in m["text"] for m in chat):
                print("idle: a customer got the bot's answer", file=sys.stderr, flush=True)  # noqa: T201
                return
            time.sleep(0.5)
    raise SystemExit("idle: the customer got no answer within 60 s")


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
        [
            sys.executable,
            "-m",
            "devstack",
            "--clean",
            "--state-dir",
            str(state / "run"),
            "--env-file",
            str(empty),
        ],
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
                host="127.0.0.1",
                port=int(saved["ports"]["redis"]),
                password=saved["redis_password"],
            )
            client.ping()
            if args.after_traffic:
                one_reply(f"http://127.0.0.1:{saved['ports']['sandbox']}")
            print(f"idle: stack up, settling {args.settle:.0f} s", file=sys.stderr, flush=True)  # noqa: T201
            time.sleep(args.settle)
            monitor = None
            if args.monitor:
                monitor = Monitor(client)
                monitor.start()
                monitor.ready.wait(10)
            pids = descendants(runner.pid)
            names = {pid: label(pid) for pid in pids}
            before_cpu = {pid: cpu_ticks(pid) for pid in pids}
            began = time.monotonic()
            before = commandstats(client)
            seconds, micros = client.time()
            server_began = float(seconds) + micros / 1e6
            print(f"idle: measuring {args.seconds:.0f} s", file=sys.stderr, flush=True)  # noqa: T201
            time.sleep(args.seconds)
            seconds, micros = client.time()
            server_ended = float(seconds) + micros / 1e6
            after = commandstats(client)
            elapsed = time.monotonic() - began
            after_cpu = {pid: cpu_ticks(pid) for pid in pids}
            restarted = sorted(set(descendants(runner.pid)) - set(pids))
            owners = socket_owners({pid: names.get(pid, f"pid {pid}") for pid in pids})
            seen = list(monitor.seen) if monitor else []
            client.close()
        finally:
            stop(runner)
    calls = {cmd: after.get(cmd, 0) - before.get(cmd, 0) for cmd in after}
    calls["info"] = calls.get("info", 0) - 1  # the first snapshot's own INFO
    calls["time"] = calls.get("time", 0) - 2  # and the benchmark's TIME
    calls = {cmd: n for cmd, n in calls.items() if n > 0}
    cpu: dict[str, float] = {}
    for pid in pids:
        first, last = before_cpu[pid], after_cpu[pid]
        if first is None or last is None:
            continue
        name = names[pid]
        cpu[name] = cpu.get(name, 0.0) + 100.0 * (last - first) / _CLK_TCK / elapsed
    total_calls = sum(calls.values())
    sent: dict[str, int] = {}
    by_process: dict[str, dict[str, int]] = {}
    for at, who, name in seen:
        if not server_began <= at < server_ended or who == "lua":
            continue
        owner = owners.get(who)
        if owner is None:
            continue  # the benchmark's own INFO and TIME
        sent[name] = sent.get(name, 0) + 1
        by_process.setdefault(owner, {})
        by_process[owner][name] = by_process[owner].get(name, 0) + 1
    return {
        "seconds": round(elapsed, 2),
        "scale": args.scale,
        "env": args.env,
        "after_traffic": bool(args.after_traffic),
        "cpu_percent": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "cpu_percent_total": round(sum(cpu.values()), 3),
        "redis_calls": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "redis_per_second": round(total_calls / elapsed, 3),
        "processes_started_during_the_window": len(restarted),
        "monitor": bool(args.monitor),
        "sent_calls": dict(sorted(sent.items(), key=lambda kv: -kv[1])),
        "sent_per_second": round(sum(sent.values()) / elapsed, 3),
        "sent_by_process": {
            k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in sorted(by_process.items())
        },
    }


def report(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    first = ", after one customer's message and its answer" if result["after_traffic"] else ""
    lines = [f"Idle for {seconds:.1f} s (no traffic{first})", "", "CPU, % of one core:"]
    for name, percent in result["cpu_percent"].items():
        lines.append(f"  {percent:7.3f}  {name}")
    lines.append(f"  {result['cpu_percent_total']:7.3f}  total (bar ≤ {BAR_CPU_PERCENT})")
    lines += ["", "Redis commands (from INFO commandstats, the benchmark's own INFO removed):"]
    for command, count in result["redis_calls"].items():
        lines.append(f"  {count / seconds:8.3f}/s  {count:7d}  {command}")
    lines.append(f"  {result['redis_per_second']:8.3f}/s  total (bar ≤ {BAR_REDIS_PER_SECOND}/s)")
    if result["monitor"]:
        lines += [
            "",
            "Redis commands sent by the stack's processes (MONITOR; scripts' own not counted):",
        ]
        for command, count in result["sent_calls"].items():
            lines.append(f"  {count / seconds:8.3f}/s  {count:7d}  {command}")
        lines.append(
            f"  {result['sent_per_second']:8.3f}/s  total sent (bar ≤ {BAR_REDIS_PER_SECOND}/s)"
        )
        lines += ["", "Sent, by process:"]
        for owner, counts in result["sent_by_process"].items():
            total = sum(counts.values())
            detail = ", ".join(f"{name} {n / seconds:.3f}" for name, n in counts.items())
            lines.append(f"  {total / seconds:8.3f}/s  {owner}: {detail}")
    if result["processes_started_during_the_window"]:
        lines.append(
            f"\nWARNING: {result['processes_started_during_the_window']} processes started "
            "during the window (a restart?): their CPU is not counted"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(report(result))  # noqa: T201 - the report of a command-line run
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    # Commands sent (MONITOR) when known, else every command Redis ran (stricter).
    per_second = result["sent_per_second"] if result["monitor"] else result["redis_per_second"]
    held = result["cpu_percent_total"] <= BAR_CPU_PERCENT and per_second <= BAR_REDIS_PER_SECOND
    print(f"\nbar: {'held' if held else 'NOT held'}")  # noqa: T201
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
