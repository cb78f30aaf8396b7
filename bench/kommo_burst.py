"""Kommo's budget spent well (bench/README.md, the bar: 20 customers writing at once through
the sandbox at 7 req/s are all answered within 4 s after the debounce, 200 within 30 s;
Kommo calls per answered message ≤ 1.0 at 20 and ≤ 0.3 at 200; 0 × 429).

What runs: the whole stack as real processes (devstack: its own Redis, the Kommo sandbox
enforcing 7 req/s, the n8n stand-in answering at once, one replica of each service or
`--gateways` of the gateway), the bridge at KOMMO_RATE_LIMIT_RPS=7 and the default
MESSAGE_DEBOUNCE_SECONDS (3). Cold: no lead was read before, so every turn needs its lead
and contact from Kommo as a new user's first burst does.

Per round (20, then 200 customers on leads no other round used): every customer writes at
once through the sandbox; the sandbox's chats are polled until each has the bridge's reply.
Measured: message → reply in the chat (p50, max, and both less the debounce), the Kommo
requests the sandbox counted during the round per answered message, and its 429s.

Sustained (`--sustained RATE`): new customers write at a steady RATE a second (one
message each, on leads no one used) for `--duration` seconds, then the bridge may drain
for `--drain` more. Per `--window` (10 s): the backlog at its end (messages written, not
yet answered in their chat), answered per second, the Kommo requests the sandbox counted
per answered message, and its 429s. The bar: 20 a second for 60 s with no growing backlog
(the last window's no larger than the first's plus `BACKLOG_SLACK_SECONDS` of arrivals),
every message answered, 0 × 429.

    bench/run.sh kommo-burst                     # 20 and 200 customers
    python -m bench.kommo_burst --customers 20,200 --gateways 3
    bench/run.sh kommo-burst --sustained 20 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import ROOT
from devstack.stack import Stack, StackConfig, start_stack
from sandbox.kommo.ids import FIRST_LEAD_ID

log = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"
DEBOUNCE_SECONDS = 3.0  # MESSAGE_DEBOUNCE_SECONDS' default
# The bar: all answered within this long after the debounce, by round size.
BAR_SECONDS = {20: 4.0, 200: 30.0}
BAR_CALLS_PER_ANSWER = {20: 1.0, 200: 0.3}
POLL_SECONDS = 0.2
# Sustained: chats polled at once (the sandbox shares the bench's two cores), and how many
# seconds of arrivals the backlog may grow by from the first window to the last and still
# count as steady (jitter of the debounce and the polling, not a trend).
POLL_CONCURRENCY = 16
BACKLOG_SLACK_SECONDS = 2.0


@dataclass
class Round:
    gateways: int
    customers: int
    answered: int
    reply_p50_s: float  # message → reply in the chat
    reply_max_s: float
    after_debounce_p50_s: float
    after_debounce_max_s: float
    kommo_requests: int
    calls_per_answer: float
    rate_limited_429: int
    by_path: dict[str, int]

    @property
    def within_bar(self) -> bool:
        bar = BAR_SECONDS.get(self.customers)
        calls = BAR_CALLS_PER_ANSWER.get(self.customers)
        return (
            self.answered == self.customers
            and self.rate_limited_429 == 0
            and (bar is None or self.after_debounce_max_s <= bar)
            and (calls is None or self.calls_per_answer <= calls)
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", default="20,200", help="writing at once, per round")
    parser.add_argument("--gateways", type=int, default=1, help="gateway replicas")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take")
    parser.add_argument(
        "--sustained", type=float, default=0.0, help="new customers a second (0: burst rounds)"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="sustained: seconds")
    parser.add_argument("--window", type=float, default=10.0, help="sustained: report window")
    parser.add_argument(
        "--drain", type=float, default=30.0, help="sustained: seconds to finish the backlog"
    )
    return parser.parse_args(argv)


def start(work: Path, gateways: int, leads: int) -> Stack:
    return start_stack(
        StackConfig(
            log_dir=work,
            env={
                "LOG_LEVEL": "WARNING",
                "MESSAGE_DEBOUNCE_SECONDS": str(DEBOUNCE_SECONDS),
                "KOMMO_RATE_LIMIT_RPS": "7",
                # Every message is to be answered by the bot, none handed to a person.
                "BOT_HANDOFF_AFTER": "0",
            },
            scale={"kommo_gateway": gateways},
            sandbox_env={"SANDBOX_LEADS": str(leads), "SANDBOX_RATE_LIMIT_RPS": "7"},
        )
    )


def stats(stack: Stack) -> dict[str, Any]:
    return dict(httpx.get(f"{stack.sandbox_url}/_sandbox/stats", timeout=30).json())


async def write_at_once(stack: Stack, messages: dict[int, str]) -> dict[int, float]:
    """Every customer writes at the same moment; returns when each message left."""
    sent_at: dict[int, float] = {}
    limits = httpx.Limits(max_connections=len(messages) + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(lead: int, text: str) -> None:
            sent_at[lead] = time.time()
            answer = await http.post(
                f"{stack.sandbox_url}/_sandbox/customer-message",
                json={"lead_id": lead, "text": text},
            )
            answer.raise_for_status()

        await asyncio.gather(*(one(lead, text) for lead, text in messages.items()))
    return sent_at


async def replies(stack: Stack, leads: list[int], wait_seconds: float) -> dict[int, float]:
    """When the bridge's reply appeared in each lead's chat (the sandbox's clock)."""
    answered: dict[int, float] = {}
    deadline = time.monotonic() + wait_seconds
    async with httpx.AsyncClient(timeout=30) as http:
        while len(answered) < len(leads) and time.monotonic() < deadline:
            waiting = [lead for lead in leads if lead not in answered]
            chats = await asyncio.gather(
                *(http.get(f"{stack.sandbox_url}/_sandbox/chats/{lead}") for lead in waiting)
            )
            for lead, chat in zip(waiting, chats, strict=True):
                outgoing = [m for m in chat.json() if m["direction"] == "outgoing"]
                if outgoing:
                    answered[lead] = min(float(m["at"]) for m in outgoing)
            await asyncio.sleep(POLL_SECONDS)
    return answered


def measure(stack: Stack, gateways: int, leads: list[int], timeout: float) -> Round:
    before = stats(stack)
    messages = {lead: f"rajada {len(leads)} cliente {lead}" for lead in leads}
    sent_at = asyncio.run(write_at_once(stack, messages))
    answered = asyncio.run(replies(stack, leads, timeout))
    time.sleep(1.0)  # a request still on its way is counted too
    after = stats(stack)
    delays = sorted(answered[lead] - sent_at[lead] for lead in answered)
    requests = int(after["requests"]) - int(before["requests"])
    by_path = {
        path: count - int(before["by_path"].get(path, 0))
        for path, count in after["by_path"].items()
        if count - int(before["by_path"].get(path, 0))
    }
    p50 = statistics.median(delays) if delays else float("nan")
    worst = delays[-1] if delays else float("nan")
    return Round(
        gateways=gateways,
        customers=len(leads),
        answered=len(answered),
        reply_p50_s=round(p50, 2),
        reply_max_s=round(worst, 2),
        after_debounce_p50_s=round(p50 - DEBOUNCE_SECONDS, 2),
        after_debounce_max_s=round(worst - DEBOUNCE_SECONDS, 2),
        kommo_requests=requests,
        calls_per_answer=round(requests / max(1, len(answered)), 2),
        rate_limited_429=int(after["rate_limited_429"]) - int(before["rate_limited_429"]),
        by_path=by_path,
    )


@dataclass
class Window:
    start_s: float  # from the first message
    end_s: float
    written: int
    answered: int
    answered_per_s: float
    backlog: int  # at the window's end: written, not yet answered
    kommo_requests: int
    calls_per_answer: float
    rate_limited_429: int


@dataclass
class Sustained:
    gateways: int
    rate: float
    duration_s: float
    written: int
    answered: int  # by the end of the drain
    reply_p50_s: float
    reply_max_s: float
    windows: list[Window]

    @property
    def within_bar(self) -> bool:
        first, last = self.windows[0], self.windows[-1]
        return (
            self.answered == self.written
            and all(w.rate_limited_429 == 0 for w in self.windows)
            and last.backlog <= first.backlog + self.rate * BACKLOG_SLACK_SECONDS
        )


class _Chats:
    """When the bridge's reply appeared in each lead's chat, polled while it is awaited."""

    def __init__(self, http: httpx.AsyncClient, stack: Stack) -> None:
        self._http = http
        self._url = f"{stack.sandbox_url}/_sandbox/chats"
        self._gate = asyncio.Semaphore(POLL_CONCURRENCY)
        self.answered: dict[int, float] = {}

    async def _look(self, lead: int) -> None:
        async with self._gate:
            chat = await self._http.get(f"{self._url}/{lead}")
        outgoing = [m for m in chat.json() if m["direction"] == "outgoing"]
        if outgoing:
            self.answered[lead] = min(float(m["at"]) for m in outgoing)

    async def sweep(self, waiting: list[int]) -> None:
        await asyncio.gather(*(self._look(lead) for lead in waiting))


async def sustain(
    stack: Stack, gateways: int, leads: list[int], rate: float, args: argparse.Namespace
) -> Sustained:
    """Open loop: each customer writes at its moment whatever the bridge is doing."""
    windows = math.ceil(args.duration / args.window)
    sent_at: dict[int, float] = {}
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        chats = _Chats(http, stack)
        samples = [(await http.get(f"{stack.sandbox_url}/_sandbox/stats")).json()]
        started_wall, started = time.time(), time.monotonic()
        writing: set[asyncio.Task[None]] = set()

        async def one(lead: int) -> None:
            sent_at[lead] = time.time()
            answer = await http.post(
                f"{stack.sandbox_url}/_sandbox/customer-message",
                json={"lead_id": lead, "text": f"fluxo {rate:g}/s cliente {lead}"},
            )
            answer.raise_for_status()

        async def write() -> None:
            for n, lead in enumerate(leads):
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                task = asyncio.create_task(one(lead))
                writing.add(task)
                task.add_done_callback(writing.discard)
            await asyncio.gather(*writing)

        async def sample() -> None:
            for k in range(1, windows + 1):
                await asyncio.sleep(max(0.0, started + k * args.window - time.monotonic()))
                stats_now = await http.get(f"{stack.sandbox_url}/_sandbox/stats")
                samples.append(stats_now.json())

        async def poll() -> None:
            give_up = started + args.duration + args.drain
            while time.monotonic() < give_up:
                waiting = [lead for lead in sent_at if lead not in chats.answered]
                if not waiting and len(sent_at) == len(leads):
                    return
                await chats.sweep(waiting)
                await asyncio.sleep(POLL_SECONDS)

        await asyncio.gather(write(), sample(), poll())
    answered = chats.answered
    result: list[Window] = []
    for k in range(windows):
        lo, hi = started_wall + k * args.window, started_wall + (k + 1) * args.window
        done = sum(1 for at in answered.values() if lo <= at < hi)
        before, after = samples[k], samples[k + 1]
        requests = int(after["requests"]) - int(before["requests"])
        result.append(
            Window(
                start_s=round(k * args.window, 1),
                end_s=round((k + 1) * args.window, 1),
                written=sum(1 for at in sent_at.values() if lo <= at < hi),
                answered=done,
                answered_per_s=round(done / args.window, 2),
                backlog=sum(1 for at in sent_at.values() if at < hi)
                - sum(1 for at in answered.values() if at < hi),
                kommo_requests=requests,
                calls_per_answer=round(requests / max(1, done), 2),
                rate_limited_429=int(after["rate_limited_429"]) - int(before["rate_limited_429"]),
            )
        )
    delays = sorted(answered[lead] - sent_at[lead] for lead in answered)
    return Sustained(
        gateways=gateways,
        rate=rate,
        duration_s=args.duration,
        written=len(sent_at),
        answered=len(answered),
        reply_p50_s=round(statistics.median(delays), 2) if delays else float("nan"),
        reply_max_s=round(delays[-1], 2) if delays else float("nan"),
        windows=result,
    )


def sustained_table(run: Sustained) -> str:
    lines = [
        f"{run.rate:g} customers a second for {run.duration_s:g} s, {run.gateways} gateway(s): "
        f"{run.answered}/{run.written} answered, reply p50 {run.reply_p50_s:.2f} s, "
        f"max {run.reply_max_s:.2f} s; within bar: {'yes' if run.within_bar else '**no**'}",
        "",
        "| window | written | answered | answered/s | backlog at end | Kommo requests "
        "| per answer | 429 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in run.windows:
        lines.append(
            f"| {w.start_s:g}–{w.end_s:g} s | {w.written} | {w.answered} "
            f"| {w.answered_per_s:.1f} | {w.backlog} | {w.kommo_requests} "
            f"| {w.calls_per_answer:.2f} | {w.rate_limited_429} |"
        )
    return "\n".join(lines)


def main_sustained(args: argparse.Namespace) -> int:
    leads = list(range(FIRST_LEAD_ID, FIRST_LEAD_ID + math.ceil(args.sustained * args.duration)))
    work = Path(tempfile.mkdtemp(prefix="bench-kommo-sustained-"))
    log.info("starting the stack, %d gateway replica(s) (logs in %s)", args.gateways, work)
    stack = start(work, args.gateways, len(leads))
    try:
        log.info("%g customers a second for %g s", args.sustained, args.duration)
        run = asyncio.run(sustain(stack, args.gateways, leads, args.sustained, args))
    finally:
        stack.stop()
    summary = sustained_table(run)
    out = RESULTS / f"kommo_sustained-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": vars(args), "run": asdict(run) | {"within_bar": run.within_bar}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "kommo_sustained-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"{summary}\nresults: {out}\n")
    return 0 if run.within_bar else 1


def table(rounds: list[Round]) -> str:
    lines = [
        "| gateways | customers | answered | reply p50 | reply max | after debounce p50 / max "
        "| Kommo requests | per answer | 429 | within bar |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.gateways} | {r.customers} | {r.answered} | {r.reply_p50_s:.2f} s "
            f"| {r.reply_max_s:.2f} s | {r.after_debounce_p50_s:.2f} / "
            f"{r.after_debounce_max_s:.2f} s | {r.kommo_requests} | {r.calls_per_answer:.2f} "
            f"| {r.rate_limited_429} | {'yes' if r.within_bar else '**no**'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.sustained > 0:
        return main_sustained(args)
    sizes = [int(n) for n in args.customers.split(",") if n.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-kommo-burst-"))
    log.info("starting the stack, %d gateway replica(s) (logs in %s)", args.gateways, work)
    stack = start(work, args.gateways, sum(sizes))
    rounds: list[Round] = []
    try:
        first = FIRST_LEAD_ID
        for size in sizes:
            leads = list(range(first, first + size))
            first += size
            log.info("round: %d customers at once", size)
            rounds.append(measure(stack, args.gateways, leads, args.timeout))
            log.info("%s", rounds[-1])
    finally:
        stack.stop()
    summary = table(rounds)
    out = RESULTS / f"kommo_burst-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": vars(args),
        "rounds": [asdict(r) | {"within_bar": r.within_bar} for r in rounds],
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "kommo_burst-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"{summary}\nresults: {out}\n")
    return 0 if all(r.within_bar for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
