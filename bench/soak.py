"""The reliability soak (bench/README.md): thousands of customer messages while every service
and every replica is SIGKILLed in turn, Redis is SIGKILLed and restarted on its AOF, and
n8n is down for a minute. Then the ledger: 0 lost messages, 0 duplicated
customer-visible effects.

What runs: the whole stack as real processes (devstack: its own Redis with AOF, the Kommo
sandbox, the n8n stand-in) with two replicas of each gRPC service and one edge. The
sandbox plays Kommo: each message is a real form-encoded webhook to the edge, and a
delivery that fails (the edge killed, Redis down) is retried later, as Kommo retries.
The stand-in answers every envelope through `/send-response`, with a text that names the
messages it answers, so every reply in a chat can be traced to its envelope.

The ledger, read at the end from the stand-in and the sandbox:
- lost: a customer message in no envelope n8n received;
- processed twice: a customer message in two different envelopes (two turns answered it);
- replies: every envelope n8n took gets exactly one bot reply in its lead's chat; the
  same reply twice in a chat is a duplicated customer-visible effect;
- webhooks Kommo gave up on (the sandbox's retries ran out) and dead letters.
Plus the time from each message to its envelope, around each kill.

    bench/run.sh soak                         # 2,000 messages at 20/s, the full schedule
    python -m bench.soak --messages 600 --rate 10
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import ROOT
from devstack.stack import Stack, StackConfig, start_stack
from sandbox.kommo.ids import FIRST_LEAD_ID

log = logging.getLogger("soak")

RESULTS = ROOT / "bench" / "results"
MARK = "soak-"


@dataclass
class Ledger:
    sent_at: dict[str, float] = field(default_factory=dict)
    lead_of: dict[str, int] = field(default_factory=dict)
    first_status: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When n8n was down (wall clock, like sent_at): a message written meanwhile waits for
    # n8n by definition, so its latency is also read from the moment n8n came back.
    n8n_down: tuple[float, float] = (0.0, 0.0)

    def event(self, started: float, what: str) -> None:
        with self.lock:
            self.events.append((round(time.monotonic() - started, 1), what))
        log.info("%6.1f s  %s", time.monotonic() - started, what)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0, help="customer messages a second")
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--n8n-down", type=float, default=60.0, help="seconds n8n is down")
    parser.add_argument("--drain-timeout", type=float, default=420.0)
    return parser.parse_args(argv)


def start(work: Path, leads: int) -> Stack:
    return start_stack(
        StackConfig(
            log_dir=work,
            env={
                "LOG_LEVEL": "WARNING",
                "MESSAGE_DEBOUNCE_SECONDS": "1",
                # The soak is about losing nothing, not the rate limit (its own benchmark).
                "KOMMO_RATE_LIMIT_RPS": "100",
                "KOMMO_REPLY_SPACING_SECONDS": "0.2",
                # Longer than the n8n outage in total, so nothing is dead-lettered.
                "N8N_RETRY_SCHEDULE": "1,2,4,8,15,30,30,30,60,60,60",
                # n8n's silence during its outage must not hand customers to a person:
                # every message is to be answered by the bot in this run. A reply lost
                # on its way back is made up for by sending the envelope again.
                "BOT_HANDOFF_AFTER": "0",
                "BOT_REPLY_TIMEOUT": "20",
            },
            scale={"conversation": 2, "kommo_gateway": 2, "vendedor": 2, "scheduling": 2},
            sandbox_env={
                "SANDBOX_RATE_LIMIT_RPS": "100",
                "SANDBOX_LEADS": str(leads),
                "SANDBOX_WEBHOOK_RETRIES": "12",
                "SANDBOX_WEBHOOK_RETRY_DELAY": "1",
                "SANDBOX_ECHO_DELAY": "0.1",
            },
        )
    )


def send_load(stack: Stack, args: argparse.Namespace, ledger: Ledger, started: float) -> None:
    """Customer messages on a fixed schedule, whatever the bridge answers."""

    def one(i: int, http: httpx.Client) -> None:
        text = f"{MARK}{i:05d}"
        lead = FIRST_LEAD_ID + i % args.leads
        with ledger.lock:
            ledger.sent_at[text] = time.time()
            ledger.lead_of[text] = lead
        try:
            answer = http.post(
                f"{stack.sandbox_url}/_sandbox/customer-message",
                json={"lead_id": lead, "text": text},
            )
            status = str(answer.json().get("bridge_status"))
        except (httpx.HTTPError, ValueError) as exc:
            status = type(exc).__name__
        with ledger.lock:
            ledger.first_status[status] += 1

    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(16) as pool:
        for i in range(args.messages):
            due = started + i / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(one, i, http)


def chaos(stack: Stack, args: argparse.Namespace, ledger: Ledger, started: float) -> None:
    """SIGKILL each replica of each service in turn, the edge, Redis; n8n down a minute."""
    load_seconds = args.messages / args.rate
    step = max(4.0, (load_seconds - args.n8n_down) / 11)

    def at(seconds: float) -> None:
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    def kill_replica(name: str, index: int, when: float) -> None:
        at(when)
        # A restarted replica goes to the end of the list: the first is always one that
        # has not been killed yet.
        process = stack.services[name][0]
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(10)
        ledger.event(started, f"SIGKILL {name} replica {index + 1}")
        time.sleep(3)
        stack.restart_service(process)
        ledger.event(started, f"{name} replica {index + 1} back")

    t = step
    for name in ("conversation", "kommo_gateway", "vendedor", "scheduling"):
        kill_replica(name, 0, t)
        t += step
    at(t)
    (edge,) = stack.services["edge_api"]
    edge.popen.send_signal(signal.SIGKILL)
    edge.popen.wait(10)
    ledger.event(started, "SIGKILL edge_api")
    time.sleep(3)
    stack.restart_edge()
    ledger.event(started, "edge_api back")
    t += step
    at(t)
    assert stack.redis is not None and stack.redis.process is not None
    stack.redis.process.send_signal(signal.SIGKILL)
    stack.redis.process.wait(10)
    ledger.event(started, "SIGKILL redis")
    time.sleep(3)
    stack.redis.start()
    ledger.event(started, "redis back (AOF replayed)")
    t += step
    at(t)
    with httpx.Client(timeout=10) as http:
        http.post(f"{stack.standin_url}/_standin/config", json={"down": True})
        down_at = time.time()
        ledger.event(started, f"n8n down for {args.n8n_down:.0f} s")
        for name in ("conversation", "kommo_gateway", "vendedor", "scheduling"):
            t += step
            kill_replica(name, 1, t)
        at(t + max(0.0, args.n8n_down - 4 * step))
        http.post(f"{stack.standin_url}/_standin/config", json={"down": False})
        ledger.n8n_down = (down_at, time.time())
        ledger.event(started, "n8n back")


def received(stack: Stack) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.standin_url}/_standin/received", timeout=60)
    return list(answer.json()["received"])


def drained(stack: Stack, ledger: Ledger) -> tuple[bool, str]:
    envelopes = received(stack)
    seen = {
        m["text"]
        for e in envelopes
        for m in e["body"].get("messages") or []
        if str(m.get("text", "")).startswith(MARK)
    }
    missing = len(set(ledger.sent_at) - seen)
    stats = httpx.get(f"{stack.sandbox_url}/_sandbox/stats", timeout=10).json()
    api = httpx.get(
        f"{stack.edge_url}/stats", headers={"X-API-Key": stack.api_key}, timeout=10
    ).json()
    busy = api["conversations"].get("awaiting_reply", 0) + api["n8n"]["outbox_pending"]
    state = (
        f"{missing} messages not at n8n yet, {busy} turns in flight, "
        f"{stats['webhook_retries_pending']} webhooks being retried"
    )
    return missing == 0 and busy == 0 and stats["webhook_retries_pending"] == 0, state


def audit(stack: Stack, ledger: Ledger) -> dict[str, Any]:
    standin = httpx.get(f"{stack.standin_url}/_standin/received", timeout=60).json()
    reply_statuses = Counter(str(r.get("status")) for r in standin["replies"])
    refused_replies = [r for r in standin["replies"] if r.get("status") not in (200, 202)]
    envelopes = [e for e in standin["received"] if e["body"].get("event") == "message.received"]
    by_event: dict[str, dict[str, Any]] = {}
    deliveries = Counter(e["body"]["event_id"] for e in envelopes)
    for e in envelopes:
        by_event.setdefault(e["body"]["event_id"], e)
    turns_of: dict[str, set[str]] = defaultdict(set)
    first_seen: dict[str, float] = {}
    for event_id, e in by_event.items():
        for m in e["body"].get("messages") or []:
            text = str(m.get("text", ""))
            if text.startswith(MARK):
                turns_of[text].add(event_id)
                first_seen[text] = min(first_seen.get(text, 1e18), e["received_at"])
    lost = sorted(set(ledger.sent_at) - set(turns_of))
    twice = sorted(t for t, ids in turns_of.items() if len(ids) > 1)

    replies: Counter[str] = Counter()
    duplicated_replies = 0
    for lead in sorted(set(ledger.lead_of.values())):
        chat = httpx.get(f"{stack.sandbox_url}/_sandbox/chats/{lead}", timeout=10).json()
        texts = [
            m["text"]
            for m in chat
            if m["direction"] == "outgoing" and m["author_type"] == "bot" and MARK in m["text"]
        ]
        counts = Counter(texts)
        duplicated_replies += sum(n - 1 for n in counts.values() if n > 1)
        for text in texts:
            replies[text] += 1
    # Each envelope's reply names the messages it answers: find its reply by them.
    unanswered = 0
    for e in by_event.values():
        names = [str(m["text"]) for m in e["body"].get("messages") or [] if MARK in str(m["text"])]
        if names and not any(all(n in r for n in names) for r in replies):
            unanswered += 1
    stats = httpx.get(f"{stack.sandbox_url}/_sandbox/stats", timeout=10).json()
    api = httpx.get(
        f"{stack.edge_url}/stats", headers={"X-API-Key": stack.api_key}, timeout=10
    ).json()
    latency = [first_seen[t] - ledger.sent_at[t] for t in first_seen]
    down, back = ledger.n8n_down
    while_up = [
        first_seen[t] - ledger.sent_at[t]
        for t in first_seen
        if not down <= ledger.sent_at[t] < back
    ]
    after_back = [first_seen[t] - back for t in first_seen if down <= ledger.sent_at[t] < back]
    return {
        "messages_sent": len(ledger.sent_at),
        "first_webhook_attempt": dict(ledger.first_status),
        "webhook_retries_by_kommo": stats["webhook_retries"],
        "webhooks_kommo_gave_up_on": stats["webhooks_given_up"],
        "lost": len(lost),
        "lost_examples": lost[:10],
        "processed_in_two_turns": len(twice),
        "twice_examples": twice[:10],
        "envelopes": len(by_event),
        "envelopes_redelivered_to_n8n": sum(n - 1 for n in deliveries.values() if n > 1),
        "envelopes_without_their_reply": unanswered,
        "bot_replies_in_chats": sum(replies.values()),
        "duplicated_bot_replies": duplicated_replies,
        "dead_letters": api["n8n"]["dead_letters"],
        "n8n_reply_attempts_by_status": dict(reply_statuses),
        "n8n_reply_attempts_refused_examples": refused_replies[:5],
        "message_to_n8n_seconds": _spread(latency),
        # Written while n8n answered (outside its outage): kills and Redis' restart only.
        "message_to_n8n_seconds_n8n_up": _spread(while_up),
        # Written while n8n was down: from the moment n8n was back to the envelope.
        "n8n_back_to_envelope_seconds": _spread(after_back),
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": round(statistics.median(values), 2) if values else None,
        "p99": round(statistics.quantiles(values, n=100)[98], 2) if len(values) > 100 else None,
        "max": round(max(values), 2) if values else None,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-stack-"))
    log.info("starting the stack (logs in %s)", work)
    stack = start(work, args.leads)
    ledger = Ledger()
    try:
        started = time.monotonic()
        disorder = threading.Thread(target=chaos, args=(stack, args, ledger, started))
        disorder.start()
        send_load(stack, args, ledger, started)
        ledger.event(started, f"all {args.messages} messages sent")
        disorder.join()
        deadline = time.monotonic() + args.drain_timeout
        while True:
            done, state = drained(stack, ledger)
            if done or time.monotonic() > deadline:
                break
            log.info("draining: %s", state)
            time.sleep(5)
        ledger.event(started, f"drained: {state}")
        time.sleep(3)  # the last replies' echoes
        result = {"settings": vars(args), "timeline": ledger.events, **audit(stack, ledger)}
    finally:
        stack.stop()
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        if key not in ("timeline", "settings"):
            print(f"{key}: {value}")  # noqa: T201 - the report of a command-line run
    ok = (
        result["lost"] == 0
        and result["processed_in_two_turns"] == 0
        and result["duplicated_bot_replies"] == 0
        and result["envelopes_without_their_reply"] == 0
        and result["webhooks_kommo_gave_up_on"] == 0
        and result["dead_letters"] == 0
    )
    print(f"\n{'PASS' if ok else 'FAIL'}: results in {out}")  # noqa: T201
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
