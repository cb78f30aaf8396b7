"""The Kommo outbound benchmark (bench/README.md): how close three gateway replicas sharing one
rate limit get to Kommo's allowance while draining a backlog, judged where Kommo judges
it — on arrival.

What runs: the whole stack as real processes (devstack: its own Redis, the Kommo sandbox,
the n8n stand-in, the services) with `kommo_gateway` scaled to 3 replicas and the same
limit on both sides: the gateway's shared Redis limiter (`KOMMO_RATE_LIMIT_RPS`) and the
sandbox's own (`SANDBOX_RATE_LIMIT_RPS`), 7 req/s by default like Kommo.

Each round: the sandbox is reset (its counters and request log start from zero; tokens
stay valid), then `--calls` `AddNote` calls are issued at once over gRPC, round-robin
over the replicas, each replica writing to its own lead so the sandbox's request log
tells the replicas apart by path. When every call has answered, the log
(`GET /_sandbox/requests`) gives the arrival time of every request, from which:

- the achieved rate over the busy period, N / (last − first arrival), and a drain rate
  that the opening burst does not flatter: limit / the mean of t[i + limit] − t[i];
- the most requests in any 1-second sliding window (computed here from the log, and the
  sandbox's own `max_requests_in_any_second`) and the tightest span of limit + 1
  consecutive arrivals (over 1,000 ms means the limit held everywhere);
- 429s (the sandbox's `rate_limited_429`), gRPC outcomes, per-replica shares.

    make bench                              # both benchmarks (bench/run.sh)
    bench/run.sh outbound --rps 20          # this one only
    python -m bench.kommo_outbound --rps 7 --calls 300 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis

from bench.cpu_meter import CpuMeter
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayStub
from devstack.processes import ROOT
from devstack.stack import Stack, StackConfig, start_stack
from sandbox.kommo.gate import RouteKind, classify
from sandbox.kommo.ids import FIRST_LEAD_ID

log = logging.getLogger("bench")

BENCH_DIR = ROOT / "bench"
BAR_RATIO = 0.95  # achieved rate ≥ 95 % of the configured one
WINDOW_S = 1.0  # Kommo's limit is per second; the sandbox counts arrivals in (t − 1 s, t]
GATEWAY = "kommo_gateway"
# What Kommo's REST limit applies to (the sandbox's gate uses the same classification).
LIMITED = (RouteKind.API, RouteKind.OAUTH)


@dataclass
class Settings:
    gateway_rps: int
    sandbox_rps: int
    replicas: int
    calls: int
    rounds: int
    timeout: float
    pause: float

    @property
    def limit(self) -> int:
        """The limit arrivals are judged by: Kommo's (the sandbox's; 0 = none there)."""
        return min(self.gateway_rps, self.sandbox_rps) if self.sandbox_rps else self.gateway_rps


# --- the backlog -------------------------------------------------------------------------


def lead_of(replica: int) -> int:
    """Each replica writes notes to its own sandbox lead: the path names the replica."""
    return FIRST_LEAD_ID + replica


def note_path(replica: int) -> str:
    return f"/api/v4/leads/{lead_of(replica)}/notes"


async def _backlog(
    addresses: list[str], calls: int, deadline: float, tag: str
) -> list[dict[str, Any]]:
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = [KommoGatewayStub(channel) for channel in channels]
    try:
        # Connect first so the calls below leave together, not behind a handshake.
        await asyncio.gather(*(channel.channel_ready() for channel in channels))

        async def one(i: int) -> dict[str, Any]:
            replica = i % len(stubs)
            request = gw.AddNoteRequest(lead_id=lead_of(replica), text=f"bench {tag} #{i}")
            started = time.monotonic()
            try:
                await stubs[replica].AddNote(request, timeout=deadline)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            return {"replica": replica, "code": code, "seconds": time.monotonic() - started}

        return list(await asyncio.gather(*(one(i) for i in range(calls))))
    finally:
        for channel in channels:
            await channel.close(None)


def backlog(addresses: list[str], calls: int, timeout: float, tag: str) -> list[dict[str, Any]]:
    """`calls` AddNote calls at once, round-robin over the replicas; their outcomes."""
    return asyncio.run(_backlog(addresses, calls, timeout, tag))


async def _warm_up(addresses: list[str], deadline: float) -> list[gw.GatewayStatus]:
    statuses = []
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = KommoGatewayStub(channel)
            statuses.append(await stub.GetStatus(gw.GetStatusRequest(), timeout=deadline))
    # One Kommo call: the access token is fetched (or refreshed) before the backlog.
    async with grpc.aio.insecure_channel(addresses[0]) as channel:
        await KommoGatewayStub(channel).GetAccount(gw.GetAccountRequest(), timeout=deadline)
    return statuses


# --- what arrived ------------------------------------------------------------------------


def max_in_any_window(times: list[float], window: float = WINDOW_S) -> int:
    """The most arrivals in any (t − window, t], the sandbox's own definition."""
    best = 0
    low = 0
    for high, now in enumerate(times):
        while times[low] <= now - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def tightest_span(times: list[float], count: int) -> float | None:
    """The shortest time covering `count` consecutive arrivals (None if fewer)."""
    if len(times) < count:
        return None
    return min(times[i + count - 1] - times[i] for i in range(len(times) - count + 1))


def effective_window(times: list[float], limit: int) -> float | None:
    """The mean of t[i + limit] − t[i]: how long each request waited, on arrival, behind the
    one `limit` places before it. Under a backlog the limiter holds it at (or just over)
    its window, whether the requests go in bursts or evenly, so `limit` / this is the
    drain rate, without the opening burst that N / busy period counts in full."""
    if len(times) <= limit:
        return None
    return statistics.fmean(times[i + limit] - times[i] for i in range(len(times) - limit))


def analyse(
    requests: list[dict[str, Any]], settings: Settings, stats: dict[str, Any]
) -> dict[str, Any]:
    limited = [r for r in requests if classify(r["path"]) in LIMITED]
    times = sorted(r["time"] for r in limited)
    first, last = (times[0], times[-1]) if times else (0.0, 0.0)
    span = last - first
    rate = len(times) / span if span > 0 else float("nan")
    limit = settings.limit
    window = effective_window(times, settings.gateway_rps)
    drain = settings.gateway_rps / window if window else float("nan")
    replicas: dict[str, Any] = {}
    for replica in range(settings.replicas):
        own = sorted(r["time"] for r in limited if r["path"] == note_path(replica))
        replicas[f"{GATEWAY}-{replica + 1}"] = {
            "requests": len(own),
            "share": len(own) / len(times) if times else 0.0,
            "first_s": own[0] - first if own else None,
            "last_s": own[-1] - first if own else None,
        }
    known = {note_path(replica) for replica in range(settings.replicas)}
    tightest = tightest_span(times, limit + 1) if limit else None
    return {
        "requests": len(times),
        "other_requests": Counter(r["path"] for r in limited if r["path"] not in known),
        "outside_the_limit": len(requests) - len(limited),
        "statuses": Counter(str(r["status"]) for r in limited),
        "busy_s": span,
        "rate": rate,
        "ratio": rate / settings.gateway_rps,
        "effective_window_ms": None if window is None else 1000 * window,
        "drain_rate": drain,
        "drain_ratio": drain / settings.gateway_rps,
        "max_in_any_second": max_in_any_window(times),
        "sandbox_max_in_any_second": stats["max_requests_in_any_second"],
        f"tightest_{limit + 1}_consecutive_ms": None if tightest is None else 1000 * tightest,
        "rate_limited_429": stats["rate_limited_429"],
        "sandbox_requests": stats["requests"],
        "replicas": replicas,
    }


# --- a round -----------------------------------------------------------------------------


def redis_evalsha(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def run_round(
    stack: Stack, settings: Settings, http: httpx.Client, number: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    addresses = [p.address for p in stack.services[GATEWAY]]
    http.post(f"{stack.sandbox_url}/_sandbox/reset").raise_for_status()
    assert stack.redis is not None and stack.redis.process is not None
    meter = CpuMeter(
        {p.name: p.popen.pid for p in stack.services[GATEWAY]} | {"redis": stack.redis.process.pid}
    )
    client = redis.Redis.from_url(stack.redis_url)
    try:
        evalsha = redis_evalsha(client)
        meter.start()
        started = time.monotonic()
        outcomes = backlog(addresses, settings.calls, settings.timeout, f"r{number}")
        wall = time.monotonic() - started
        cpu = meter.stop()
        evalsha = redis_evalsha(client) - evalsha
    finally:
        client.close()
    stats = dict(http.get(f"{stack.sandbox_url}/_sandbox/stats").json())
    requests = list(http.get(f"{stack.sandbox_url}/_sandbox/requests", params={"since": 0}).json())
    result = analyse(requests, settings, stats)
    seconds = sorted(o["seconds"] for o in outcomes)
    result.update(
        round=number,
        calls=settings.calls,
        grpc_codes=Counter(o["code"] for o in outcomes),
        client_wall_s=wall,
        client_p50_s=statistics.median(seconds),
        client_max_s=seconds[-1],
        cpu_percent=cpu,
        redis_evalsha=evalsha,
    )
    log.info(
        "round %d: %d requests in %.2f s = %.3f req/s (%.1f %% of %d), drain %.3f req/s, "
        "max %d in any second (sandbox %d), %d × 429, gRPC %s",
        number,
        result["requests"],
        result["busy_s"],
        result["rate"],
        100 * result["ratio"],
        settings.gateway_rps,
        result["drain_rate"],
        result["max_in_any_second"],
        result["sandbox_max_in_any_second"],
        result["rate_limited_429"],
        dict(result["grpc_codes"]),
    )
    return result, requests


# --- report ------------------------------------------------------------------------------


def bar(rounds: list[dict[str, Any]], settings: Settings) -> dict[str, bool]:
    limit = settings.limit
    return {
        "rate >= 95 % of the configured one (N / busy period), every round": all(
            r["ratio"] >= BAR_RATIO for r in rounds
        ),
        "drain rate >= 95 % of the configured one (limit / effective window), every round": all(
            r["drain_ratio"] >= BAR_RATIO for r in rounds
        ),
        f"never more than {limit} in any 1 s window": all(
            max(r["max_in_any_second"], r["sandbox_max_in_any_second"]) <= limit for r in rounds
        ),
        "0 × 429": all(r["rate_limited_429"] == 0 for r in rounds),
        "every call answered OK": all(
            r["grpc_codes"].get("OK", 0) == settings.calls for r in rounds
        ),
    }


def markdown(rounds: list[dict[str, Any]], settings: Settings, machine: dict[str, Any]) -> str:
    limit = settings.limit
    heads = " | ".join(f"round {r['round']}" for r in rounds)
    lines = [
        f"### Kommo outbound — {settings.replicas} gateway replicas, gateway limit "
        f"{settings.gateway_rps} req/s, sandbox limit {settings.sandbox_rps} req/s, "
        f"{machine['cpus']} CPUs",
        "",
        f"{settings.calls} `AddNote` calls at once per round, round-robin over the replicas; "
        "figures from the sandbox's request log (arrivals).",
        "",
        f"| | {heads} |",
        "|---|" + "---:|" * len(rounds),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("requests that reached Kommo", [f"{r['requests']}" for r in rounds])
    row("busy period (first → last arrival)", [f"{r['busy_s']:.2f} s" for r in rounds])
    row(
        "achieved rate, N / busy period",
        [
            f"{r['rate']:.3f} req/s = **{100 * r['ratio']:.2f} %** of {settings.gateway_rps}"
            for r in rounds
        ],
    )
    row(
        "effective window, mean of t[i + limit] − t[i]",
        [
            f"{r['effective_window_ms']:,.1f} ms" if r["effective_window_ms"] else "—"
            for r in rounds
        ],
    )
    row(
        "drain rate, limit / effective window",
        [f"{r['drain_rate']:.3f} req/s = **{100 * r['drain_ratio']:.2f} %**" for r in rounds],
    )
    row(
        "max in any 1 s window (log / sandbox)",
        [f"**{r['max_in_any_second']}** / {r['sandbox_max_in_any_second']}" for r in rounds],
    )
    key = f"tightest_{limit + 1}_consecutive_ms"
    row(
        f"tightest span of {limit + 1} consecutive arrivals",
        [f"{r[key]:,.0f} ms" if r[key] is not None else "—" for r in rounds],
    )
    row("429s", [f"**{r['rate_limited_429']}**" for r in rounds])
    row(
        "gRPC outcomes", [", ".join(f"{k} {v}" for k, v in r["grpc_codes"].items()) for r in rounds]
    )
    row(
        "client: all answered after / median call",
        [f"{r['client_wall_s']:.2f} s / {r['client_p50_s']:.2f} s" for r in rounds],
    )
    for replica in range(settings.replicas):
        name = f"{GATEWAY}-{replica + 1}"
        row(
            f"{name}: share, last arrival",
            [
                f"{100 * r['replicas'][name]['share']:.1f} %, "
                + (
                    f"+{r['replicas'][name]['last_s']:.1f} s"
                    if r["replicas"][name]["last_s"] is not None
                    else "—"
                )
                for r in rounds
            ],
        )
    row(
        "CPU (% of one core): gateways / Redis",
        [
            " + ".join(f"{v:.0f}" for k, v in r["cpu_percent"].items() if k.startswith(GATEWAY))
            + f" / {r['cpu_percent'].get('redis', 0):.0f}"
            for r in rounds
        ],
    )
    row(
        "Redis EVALSHA per request (every service: limiter, due-queue polls)",
        [f"{r['redis_evalsha'] / max(r['requests'], 1):.1f}" for r in rounds],
    )
    others = sum(sum(r["other_requests"].values()) for r in rounds)
    if others:
        lines += ["", f"Other rate-limited requests in the busy periods: {others} (counted)."]
    lines += ["", "The bar (bench/README.md):", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in bar(rounds, settings).items()]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Kommo outbound: 3 gateway replicas draining a backlog at the rate limit"
    )
    parser.add_argument(
        "--rps", type=int, default=7, help="the limit on both sides (default 7, Kommo's)"
    )
    parser.add_argument(
        "--gateway-rps", type=int, default=None, help="KOMMO_RATE_LIMIT_RPS (default --rps)"
    )
    parser.add_argument(
        "--sandbox-rps", type=int, default=None, help="SANDBOX_RATE_LIMIT_RPS (default --rps)"
    )
    parser.add_argument("--replicas", type=int, default=3, help="gateway replicas")
    parser.add_argument("--calls", type=int, default=300, help="AddNote calls per round")
    parser.add_argument("--rounds", type=int, default=2, help="backlogs, one after the other")
    parser.add_argument(
        "--timeout", type=float, default=None, help="gRPC deadline per call (default: generous)"
    )
    parser.add_argument(
        "--pause", type=float, default=2.0, help="seconds between rounds (windows empty)"
    )
    args = parser.parse_args(argv)
    gateway_rps = args.gateway_rps or args.rps
    sandbox_rps = args.sandbox_rps if args.sandbox_rps is not None else args.rps
    if gateway_rps <= 0 or args.replicas <= 0 or args.calls <= 0 or args.rounds <= 0:
        parser.error("--rps, --gateway-rps, --replicas, --calls and --rounds must be positive")
    # The backlog drains in about calls / rps seconds; the last call waits that long.
    timeout = args.timeout or max(60.0, 3 * args.calls / gateway_rps)
    return Settings(
        gateway_rps=gateway_rps,
        sandbox_rps=sandbox_rps,
        replicas=args.replicas,
        calls=args.calls,
        rounds=args.rounds,
        timeout=timeout,
        pause=args.pause,
    )


def _jsonable(value: Any) -> Any:
    return dict(value) if isinstance(value, Counter) else value


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = BENCH_DIR / "results"
    out_dir = results_dir / f"kommo_outbound-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    stack: Stack | None = None
    try:
        log.info(
            "starting the stack with %d gateway replicas, limits %d (gateway) / %d (sandbox)",
            settings.replicas,
            settings.gateway_rps,
            settings.sandbox_rps,
        )
        stack = start_stack(
            StackConfig(
                log_dir=work,
                env={"LOG_LEVEL": "WARNING", "KOMMO_RATE_LIMIT_RPS": str(settings.gateway_rps)},
                scale={GATEWAY: settings.replicas},
                sandbox_env={"SANDBOX_RATE_LIMIT_RPS": str(settings.sandbox_rps)},
            )
        )
        addresses = [p.address for p in stack.services[GATEWAY]]
        statuses = asyncio.run(_warm_up(addresses, deadline=30.0))
        configured = {s.rate_limit_rps for s in statuses}
        if configured != {settings.gateway_rps}:
            raise RuntimeError(f"gateway replicas report rate limits {configured}")
        rounds: list[dict[str, Any]] = []
        logs: dict[str, list[dict[str, Any]]] = {}
        with httpx.Client(timeout=30.0) as http:
            warm_up_stats = dict(http.get(f"{stack.sandbox_url}/_sandbox/stats").json())
            for number in range(1, settings.rounds + 1):
                time.sleep(settings.pause)  # both sliding windows empty before a round
                result, requests = run_round(stack, settings, http, number)
                rounds.append({k: _jsonable(v) for k, v in result.items()})
                logs[f"round {number}"] = requests

        machine = machine_info()
        table = markdown(rounds, settings, machine)
        report = {
            "benchmark": "kommo_outbound",
            "when": stamp,
            "machine": machine,
            "settings": asdict(settings),
            "warm_up_sandbox_stats": warm_up_stats,
            "bar": bar(rounds, settings),
            "rounds": rounds,
        }
        text = json.dumps(report, indent=2) + "\n"
        (out_dir / "results.json").write_text(text)
        (out_dir / "requests.json").write_text(json.dumps(logs) + "\n")
        (out_dir / "summary.md").write_text(table)
        (results_dir / "kommo_outbound-latest.json").write_text(text)
        sys.stdout.write(table)
        sys.stdout.write(f"\nresults: {out_dir.relative_to(ROOT)}/\n")
        return 0
    finally:
        if stack is not None:
            stack.stop()
            for log_file in work.glob("*.log"):
                shutil.copy(log_file, out_dir / log_file.name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
