"""Webhook → n8n envelope latency (bench/README.md: p50 ≤ 15 ms, p99 ≤ 60 ms at 100 msg/s,
debounce off): from the moment a Kommo webhook leaves for the edge to the moment the n8n
stand-in has the envelope.

What runs: the whole stack as real processes (devstack: its own Redis with AOF, the
Kommo sandbox, the n8n stand-in, one replica of each service), `MESSAGE_DEBOUNCE_SECONDS=0`.
Every envelope goes through the whole reactive path: the durable ack, the event consumer,
the conversation, the context (lead and contact through the gateway's Redis cache, the
vendedor through the vendedor service), the envelope POSTed to the stand-in, which
answers it through `/send-response`, so the replies (Salesbot runs in the sandbox, notes,
echoes coming back as webhooks) load the same machine as they would in production.

1. warm-up: one message for each of `--leads` leads, so the gateway's cache holds every
   lead and contact, as it would for conversations under way; wait until all are answered;
2. measure: `--rate` messages a second for `--duration` seconds, open loop (each request
   starts on schedule whatever the others do), round robin over the leads, so each
   conversation gets a message every leads / rate seconds (its previous turn answered);
3. pair each message with its envelope (by text) and report the latency from the
   request's scheduled start to the stand-in's receipt.

    bench/run.sh latency                     # 100 msg/s for 20 s over 1,000 leads
    python -m bench.envelope_latency --rate 50 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx
import redis

from bench import profiling, work_counter
from bench.kommo_body import body, lead_template
from devstack.processes import ROOT
from devstack.stack import Stack, StackConfig, start_stack

log = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="messages a second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--leads", type=int, default=1000)
    parser.add_argument("--warmup-rate", type=float, default=100.0)
    parser.add_argument(
        "--kommo-rps",
        type=int,
        default=7,
        help="Kommo's rate limit, in the sandbox and the bridge alike (Kommo's: 7)",
    )
    parser.add_argument(
        "--count-work",
        action="store_true",
        help="count the Redis commands the stack sends (MONITOR) and the gRPC calls it "
        "serves per message, over the whole loop until the stack is quiet again "
        "(bench/work_counter.py; MONITOR slows Redis, so the latency of such a run is not "
        "the one to quote)",
    )
    parser.add_argument(
        "--inbound-only",
        action="store_true",
        help="the stand-in takes the envelopes without replying: webhook → envelope alone "
        "(use --leads ≥ rate × duration, one message per conversation). The gateway keeps "
        "its copies of the leads for 10 minutes: the warm-up's answers go out at Kommo's "
        "7 a second, past the default 60 s, and the run would measure Kommo re-reading "
        "them (kommo-burst's subject) instead of the bridge's own capacity",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on every process during the measured run (bench/profiling.py)",
    )
    return parser.parse_args(argv)


async def send(
    stack: Stack, texts: list[tuple[int, str]], rate: float
) -> tuple[dict[str, float], dict[str, int], list[float]]:
    """Open loop: message i starts at i / rate whatever the others do; returns each
    message's scheduled start (wall clock), the edge's answers, and each webhook's ack
    time (ms from its scheduled start to the edge's answer)."""
    started: dict[str, float] = {}
    statuses: dict[str, int] = {}
    acks: list[float] = []
    # aiohttp: the load generator shares the machine's two cores with the stack, so it
    # should cost as little per request as it can.
    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(lead: int, text: str, at: float) -> None:
            payload = body(lead_template(lead, text), str(uuid.uuid4()))
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            started[text] = time.time() - max(0.0, time.monotonic() - at)
            try:
                async with http.post(
                    stack.webhook_url,
                    data=payload,
                    headers={"content-type": "application/x-www-form-urlencoded"},
                ) as answer:
                    await answer.read()
                    key = str(answer.status)
                acks.append(1000 * (time.monotonic() - at))
            except (TimeoutError, aiohttp.ClientError) as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1

        begin = time.monotonic() + 0.5
        await asyncio.gather(
            *(one(lead, text, begin + i / rate) for i, (lead, text) in enumerate(texts))
        )
    return started, statuses, acks


def envelopes(stack: Stack) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.standin_url}/_standin/received", timeout=60)
    return [r for r in answer.json()["received"] if r["body"].get("event") == "message.received"]


def settle(stack: Stack, expected: int, timeout: float = 120.0, answered: bool = True) -> None:
    """Until the stand-in has `expected` envelopes and (`answered`) every turn is
    answered."""
    deadline = time.monotonic() + timeout
    headers = {"X-API-Key": stack.api_key}
    while time.monotonic() < deadline:
        stats = httpx.get(f"{stack.edge_url}/stats", headers=headers, timeout=10).json()
        busy = stats["n8n"]["outbox_pending"]
        if answered:
            busy += stats["conversations"].get("awaiting_reply", 0)
        if len(envelopes(stack)) >= expected and busy == 0:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the stack did not settle in {timeout:.0f} s")


def arrive(stack: Stack, expected: int, timeout: float = 120.0) -> None:
    """Until the stand-in has had `expected` messages in its envelopes (asking only it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(e["body"].get("messages") or []) for e in envelopes(stack)) >= expected:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{expected} messages did not reach the stand-in in {timeout:.0f} s")


def stack_pids(stack: Stack) -> dict[str, int]:
    """The first replica of every service, the sandbox, the stand-in and Redis."""
    pids = {name: replicas[0].popen.pid for name, replicas in stack.services.items()}
    for name, process in (("sandbox", stack.sandbox), ("standin", stack.standin)):
        if process is not None:
            pids[name] = process.popen.pid
    if stack.redis is not None and stack.redis.process is not None:
        pids["redis"] = stack.redis.process.pid
    return pids


def redis_calls(stack: Stack) -> dict[str, int]:
    """Commands Redis has run, by command (INFO commandstats)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profiles(
    stack: Stack, pids: dict[str, int], duration: float, out: Path
) -> dict[str, Any]:
    """py-spy on each Python process of the stack for the measured run."""
    spy = profiling.py_spy()
    if spy is None:
        log.warning("py-spy not found (.venv/bin/pip install py-spy): no profile")
        return {}
    return {
        name: profiling.record(spy, pid, duration, out / f"profile-{name}.txt", native=False)
        for name, pid in pids.items()
        if name != "redis"
    }


def finish_profiles(spies: dict[str, Any], out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, process in spies.items():
        _, err = process.communicate(timeout=120)
        path = out / f"profile-{name}.txt"
        if process.returncode == 0 and path.exists():
            report[name] = profiling.summarize(path.read_text())
        else:
            log.warning("py-spy on %s failed: %s", name, err.decode(errors="replace")[-500:])
    return report


def metrics_ports(stack: Stack) -> list[int]:
    return [p.metrics_port for ps in stack.services.values() for p in ps if p.metrics_port]


def start_counting(stack: Stack, out: Path) -> work_counter.RedisMonitor | None:
    if not work_counter.RedisMonitor.available():
        log.warning("redis-cli not found: Redis commands not counted")
        return None
    url = urlsplit(stack.redis_url)
    monitor = work_counter.RedisMonitor(
        url.port or 6379, unquote(url.password or ""), out / "monitor.txt"
    )
    monitor.start()
    return monitor


def finish_counting(
    stack: Stack, monitor: work_counter.RedisMonitor, grpc_before: dict[str, float], count: int
) -> dict[str, Any]:
    """Once the stack is quiet (replies, notes and echoes done): what it sent Redis and
    the gRPC calls it served, per message."""
    monitor.quiet()
    processes = {p.popen.pid: p.name for ps in stack.services.values() for p in ps}
    sent = monitor.sent(work_counter.socket_owners(processes))
    monitor.stop()
    grpc = work_counter.difference(work_counter.grpc_served(metrics_ports(stack)), grpc_before)
    per = max(1, count)
    return {
        "redis_sent": round(sent.total / per, 2),
        "redis_sent_by_command": {
            k: round(v / per, 2) for k, v in sorted(sent.by_command.items(), key=lambda kv: -kv[1])
        },
        "redis_sent_by_process": {
            name: round(sum(c.values()) / per, 2) for name, c in sorted(sent.by_process.items())
        },
        "redis_run_inside_scripts": round(sent.in_scripts / per, 2),
        "grpc_calls": round(sum(grpc.values()) / per, 2),
        "grpc_calls_by_method": {
            k.rsplit("/", 1)[-1]: round(v / per, 2)
            for k, v in sorted(grpc.items(), key=lambda kv: -kv[1])
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    out = RESULTS / f"envelope_latency-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    log.info("starting the stack (logs in %s)", work)
    stack = start_stack(
        StackConfig(
            log_dir=work,
            env={
                "LOG_LEVEL": "WARNING",
                "MESSAGE_DEBOUNCE_SECONDS": "0",
                # Kommo's own budget by default (7 a second), as a user runs it: the
                # replies' calls are batched as they would be, and cost what they would.
                "KOMMO_RATE_LIMIT_RPS": str(args.kommo_rps),
                **({"KOMMO_CACHE_TTL_SECONDS": "600"} if args.inbound_only else {}),
            },
            sandbox_env={
                "SANDBOX_LEADS": str(args.leads),
                "SANDBOX_RATE_LIMIT_RPS": str(args.kommo_rps),
                "SANDBOX_ECHO_DELAY": "0.2",
            },
        )
    )
    try:
        warm = [(n, f"aquecimento {n}") for n in range(1, args.leads + 1)]
        log.info("warm-up: %d messages, one per lead, at %g/s", len(warm), args.warmup_rate)
        asyncio.run(send(stack, warm, args.warmup_rate))  # answers not kept
        settle(stack, len(warm))
        httpx.post(f"{stack.standin_url}/_standin/reset", timeout=10).raise_for_status()
        if args.inbound_only:
            httpx.post(
                f"{stack.standin_url}/_standin/config", json={"auto_reply": False}, timeout=10
            ).raise_for_status()

        count = int(args.rate * args.duration)
        texts = [(i % args.leads + 1, f"medida {i:06d}") for i in range(count)]
        log.info("measuring: %d messages at %g/s over %d leads", count, args.rate, args.leads)
        pids = stack_pids(stack)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        calls_before = redis_calls(stack)
        spies = start_profiles(stack, pids, args.duration, out) if args.profile else {}
        monitor = start_counting(stack, out) if args.count_work else None
        grpc_before = work_counter.grpc_served(metrics_ports(stack))
        client_cpu = time.process_time()
        started, statuses, acks = asyncio.run(send(stack, texts, args.rate))
        client_cpu = time.process_time() - client_cpu
        profiled = finish_profiles(spies, out)
        if monitor is not None:
            # Not /stats: its reads would be counted as the stack's work. The stand-in's
            # count, then the quiet that follows the last echo (finish_counting).
            arrive(stack, len(texts))
        else:
            settle(stack, len(texts) if args.inbound_only else 1, answered=not args.inbound_only)
        work_done: dict[str, Any] = {}
        if monitor is not None:
            work_done = finish_counting(stack, monitor, grpc_before, count)
        cpu_ms = {
            name: round(1000 * (cpu_seconds(pid) - cpu_before[name]) / max(1, count), 2)
            for name, pid in pids.items()
        }
        cpu_ms["bench client"] = round(1000 * client_cpu / max(1, count), 2)
        calls_after = redis_calls(stack)
        redis_per_message = {
            name: round((calls_after[name] - calls_before.get(name, 0)) / max(1, count), 2)
            for name in calls_after
            if calls_after[name] > calls_before.get(name, 0)
        }
        time.sleep(2.0)
        arrived: dict[str, float] = {}
        per_envelope: list[int] = []
        for record in envelopes(stack):
            messages = record["body"].get("messages") or []
            per_envelope.append(len(messages))
            for m in messages:
                text = str(m.get("text", ""))
                if text in started and text not in arrived:
                    arrived[text] = record["received_at"]
    finally:
        stack.stop()

    latencies = [1000 * (arrived[t] - started[t]) for t in arrived]
    figures = (
        {
            "p50": round(statistics.median(latencies), 2),
            "p90": round(percentile(latencies, 0.90), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "max": round(max(latencies), 2),
        }
        if latencies
        else {}
    )
    bar = {
        "every message reached n8n": len(arrived) == len(started),
        "every webhook acked (200) within 1 s": statuses.get("200", 0) == len(started)
        and bool(acks)
        and max(acks) <= 1000,
        "p50 <= 15 ms": bool(figures) and figures["p50"] <= 15,
        "p99 <= 60 ms": bool(figures) and figures["p99"] <= 60,
    }
    result: dict[str, Any] = {
        "settings": vars(args),
        "messages": len(started),
        "edge_answers": statuses,
        # The webhook ack (Kommo gives about 2 s): from its scheduled start, queueing in the
        # client included, to the edge's answer.
        "ack_ms": {
            "p50": round(statistics.median(acks), 2),
            "p99": round(percentile(acks, 0.99), 2),
            "max": round(max(acks), 2),
            "over 1 s": sum(1 for a in acks if a > 1000),
        }
        if acks
        else {},
        "reached_n8n": len(arrived),
        "envelopes": len(per_envelope),
        "messages_per_envelope_max": max(per_envelope, default=0),
        "latency_ms": figures,
        "bar": bar,
        "cpu_ms_per_message": cpu_ms | {"total": round(sum(cpu_ms.values()), 2)},
        "work_per_message": work_done,
        "redis_commands_per_message": dict(sorted(redis_per_message.items(), key=lambda kv: -kv[1]))
        | {"total": round(sum(redis_per_message.values()), 2)},
    }
    if profiled:
        result["profile"] = profiled
        (out / "profile.md").write_text(
            "\n".join(profiling.markdown(name, data) for name, data in profiled.items())
        )
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + f"\nresults: {out}\n")
    return 0 if all(bar.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
