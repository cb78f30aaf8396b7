"""A slow n8n holds up no one (bench/README.md, the bar: with an n8n whose webhook answers
each envelope after 2 s, 50 customers writing at once all reach n8n within 3 s of the
first; after 5 s, within 6 s; every envelope POSTed once, also over 3 replicas).

What runs: the whole stack as real processes (devstack: its own Redis with AOF, the
Kommo sandbox, the n8n stand-in, one replica of each service, or `--replicas` of the
conversation service), `MESSAGE_DEBOUNCE_SECONDS=0`. The stand-in answers each envelope
only after N seconds (`POST /_standin/config {"delay_seconds": N}`), holding as many open
at once as the bridge sends, and sends its reply to `/send-response` when the hold ends.

Per stack (1 conversation replica, then 3):
1. warm-up: one message from each lead the rounds use, with n8n answering at once, so
   every conversation is under way and the gateway's cache holds its lead and contact
   (Kommo's rate limit has its own benchmark); wait until every turn is answered;
2. per delay N: 50 customers (leads not used by another round) write at once through
   the Kommo sandbox; wait until every turn is answered; read from the stand-in when
   each envelope arrived (relative to the round's first) and how many POSTs each
   `event_id` got.

    bench/run.sh slow-n8n                          # N = 2 and 5; 1 and 3 replicas
    python -m bench.slow_n8n --delays 2 --replicas 3 --customers 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import ROOT
from devstack.stack import Stack, StackConfig, start_stack
from sandbox.kommo.ids import FIRST_LEAD_ID

log = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"
# The bar's slack over the delay itself: all 50 within N + 1 s of the first.
SLACK_SECONDS = 1.0


@dataclass
class Round:
    replicas: int
    delay: float
    customers: int
    webhooks_ok: int
    customers_at_n8n: int
    envelopes: int
    event_ids: int
    posts_per_event_max: int
    posted_more_than_once: int
    spread_s: float  # last envelope's arrival − first's
    arrival_p50_s: float  # median arrival after the round's first
    message_to_envelope_max_s: float
    max_open_at_n8n: int
    seconds_to_settle: float

    @property
    def within_bar(self) -> bool:
        return self.spread_s <= self.delay + SLACK_SECONDS

    @property
    def once_each(self) -> bool:
        return self.posted_more_than_once == 0 and self.customers_at_n8n == self.customers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="2,5", help="n8n's answer delays, seconds")
    parser.add_argument("--replicas", default="1,3", help="conversation replicas, per stack")
    parser.add_argument("--customers", type=int, default=50, help="writing at once")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=0.0,
        help="seconds a round may take (default: customers × delay + 120)",
    )
    return parser.parse_args(argv)


def start(work: Path, replicas: int, leads: int) -> Stack:
    return start_stack(
        StackConfig(
            log_dir=work,
            env={
                "LOG_LEVEL": "WARNING",
                "MESSAGE_DEBOUNCE_SECONDS": "0",
                # The subject is n8n's speed, not Kommo's budget (its own benchmarks).
                "KOMMO_RATE_LIMIT_RPS": "2000",
                "KOMMO_REPLY_SPACING_SECONDS": "0.05",
                # A slow n8n must not hand customers to a person mid-run: every message is
                # to reach n8n and be answered by the bot.
                "BOT_HANDOFF_AFTER": "0",
            },
            scale={"conversation": replicas},
            sandbox_env={
                "SANDBOX_LEADS": str(leads),
                "SANDBOX_RATE_LIMIT_RPS": "2000",
                "SANDBOX_ECHO_DELAY": "0.2",
            },
        )
    )


async def write_at_once(stack: Stack, messages: dict[str, int]) -> tuple[dict[str, float], int]:
    """Every customer writes at the same moment (text → lead); returns when each message
    left and how many webhooks the bridge took (2xx)."""
    sent_at: dict[str, float] = {}
    limits = httpx.Limits(max_connections=len(messages) + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(text: str, lead: int) -> bool:
            sent_at[text] = time.time()
            answer = await http.post(
                f"{stack.sandbox_url}/_sandbox/customer-message",
                json={"lead_id": lead, "text": text},
            )
            status = answer.json().get("bridge_status")
            return isinstance(status, int) and 200 <= status < 300

        taken = await asyncio.gather(*(one(text, lead) for text, lead in messages.items()))
    return sent_at, sum(taken)


def standin(stack: Stack) -> dict[str, Any]:
    answer = httpx.get(f"{stack.standin_url}/_standin/received", timeout=60)
    return dict(answer.json())


def texts_at_n8n(records: list[dict[str, Any]]) -> set[str]:
    return {
        str(m.get("text", ""))
        for r in records
        if r["body"].get("event") == "message.received"
        for m in r["body"].get("messages") or []
    }


def settle(stack: Stack, texts: set[str], timeout: float) -> None:
    """Until every text is at n8n and every turn is answered."""
    deadline = time.monotonic() + timeout
    headers = {"X-API-Key": stack.api_key}
    while time.monotonic() < deadline:
        missing = texts - texts_at_n8n(standin(stack)["received"])
        stats = httpx.get(f"{stack.edge_url}/stats", headers=headers, timeout=10).json()
        busy = stats["conversations"].get("awaiting_reply", 0) + stats["n8n"]["outbox_pending"]
        if not missing and busy == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the stack did not settle in {timeout:.0f} s ({len(missing)} missing)")


def configure(stack: Stack, delay: float) -> None:
    http = httpx.Client(timeout=10)
    with http:
        http.post(f"{stack.standin_url}/_standin/config", json={"delay_seconds": delay})
        http.post(f"{stack.standin_url}/_standin/reset").raise_for_status()


def measure(
    stack: Stack, replicas: int, delay: float, leads: list[int], timeout: float
) -> tuple[Round, list[dict[str, Any]]]:
    configure(stack, delay)
    messages = {
        f"lento r{replicas} n{delay:g} cliente {i:03d}": lead for i, lead in enumerate(leads)
    }
    began = time.monotonic()
    sent_at, taken = asyncio.run(write_at_once(stack, messages))
    settle(stack, set(messages), timeout)
    settled = time.monotonic() - began
    # A POST of an envelope sent again would be recorded on arrival: one more second for
    # any already on its way.
    time.sleep(1.0)
    seen = standin(stack)
    records = [r for r in seen["received"] if r["body"].get("event") == "message.received"]
    posts = Counter(r["body"]["event_id"] for r in records)
    first_arrival: dict[str, float] = {}
    for r in records:
        for m in r["body"].get("messages") or []:
            text = str(m.get("text", ""))
            if text in messages:
                first_arrival[text] = min(first_arrival.get(text, 1e18), r["arrived_at"])
    start = min(first_arrival.values())
    offsets = sorted(t - start for t in first_arrival.values())
    result = Round(
        replicas=replicas,
        delay=delay,
        customers=len(messages),
        webhooks_ok=taken,
        customers_at_n8n=len(first_arrival),
        envelopes=len(records),
        event_ids=len(posts),
        posts_per_event_max=max(posts.values()),
        posted_more_than_once=sum(1 for n in posts.values() if n > 1),
        spread_s=round(offsets[-1], 3),
        arrival_p50_s=round(statistics.median(offsets), 3),
        message_to_envelope_max_s=round(
            max(first_arrival[t] - sent_at[t] for t in first_arrival), 3
        ),
        max_open_at_n8n=int(seen["max_open"]),
        seconds_to_settle=round(settled, 1),
    )
    arrivals = [
        {
            "event_id": r["body"]["event_id"],
            "arrived_s": round(r["arrived_at"] - start, 3),
            "answered_s": round(r.get("answered_at", 0.0) - start, 3),
            "open_at_arrival": r["open_at_arrival"],
            "messages": [m.get("text") for m in r["body"].get("messages") or []],
        }
        for r in sorted(records, key=lambda r: float(r["arrived_at"]))
    ]
    return result, arrivals


def run_stack(
    args: argparse.Namespace, replicas: int, delays: list[float], out: Path
) -> list[Round]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-slow-n8n-{replicas}-"))
    leads_needed = args.customers * len(delays)
    log.info("starting the stack, %d conversation replica(s) (logs in %s)", replicas, work)
    stack = start(work, replicas, leads_needed)
    rounds: list[Round] = []
    try:
        lead_ids = [FIRST_LEAD_ID + i for i in range(leads_needed)]
        warm = {f"aquecimento r{replicas} {lead}": lead for lead in lead_ids}
        log.info("warm-up: one message from each of %d leads, n8n answering at once", len(warm))
        configure(stack, 0.0)
        asyncio.run(write_at_once(stack, warm))
        settle(stack, set(warm), 300.0)
        for index, delay in enumerate(delays):
            leads = lead_ids[index * args.customers : (index + 1) * args.customers]
            timeout = args.settle_timeout or args.customers * delay + 120
            log.info("round: %d customers at once, n8n answers after %g s", len(leads), delay)
            result, arrivals = measure(stack, replicas, delay, leads, timeout)
            log.info("%s", result)
            (out / f"arrivals-r{replicas}-n{delay:g}.json").write_text(
                json.dumps(arrivals, indent=1) + "\n"
            )
            rounds.append(result)
    finally:
        stack.stop()
    return rounds


def table(rounds: list[Round]) -> str:
    lines = [
        "| replicas | n8n delay | customers | at n8n | envelopes | first → last | median "
        "| message → envelope max | most open at n8n | POSTs per event_id (max) | within N + 1 s "
        "| each once |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.replicas} | {r.delay:g} s | {r.customers} | {r.customers_at_n8n} "
            f"| {r.envelopes} | {r.spread_s:.2f} s | {r.arrival_p50_s:.2f} s "
            f"| {r.message_to_envelope_max_s:.2f} s | {r.max_open_at_n8n} "
            f"| {r.posts_per_event_max} | {'yes' if r.within_bar else '**no**'} "
            f"| {'yes' if r.once_each else '**no**'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    replica_counts = [int(r) for r in args.replicas.split(",") if r.strip()]
    out = RESULTS / f"slow_n8n-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[Round] = []
    for replicas in replica_counts:
        rounds.extend(run_stack(args, replicas, delays, out))
    summary = table(rounds)
    result = {
        "settings": vars(args),
        "rounds": [
            asdict(r) | {"within_bar": r.within_bar, "once_each": r.once_each} for r in rounds
        ],
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "summary.md").write_text(summary + "\n")
    (RESULTS / "slow_n8n-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"{summary}\nresults: {out}\n")
    return 0 if all(r.within_bar and r.once_each for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
