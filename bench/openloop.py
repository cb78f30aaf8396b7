"""Open-loop load at a fixed rate, for latency (wrk can only run closed-loop, and wrk2 is
not packaged by Debian).

Requests start on a fixed schedule (`rate` a second) whether or not earlier ones have
answered, each on an idle keep-alive connection (a new one when none is idle), and each
latency is measured from the request's *scheduled* start: a stall of the server then
shows in every request it delayed, not only in the one it hit (no coordinated omission).

Runs as its own process (the benchmark starts it) with the collector off, so the
generator's own pauses do not land in the figures; prints one JSON object:

    python -m bench.openloop --url 'http://127.0.0.1:8000/webhooks/kommo?secret=…' \
        --rate 300 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvloop

from bench.kommo_body import body, body_template

_CONNECT_TIMEOUT = 5.0
_ANSWER_TIMEOUT = 10.0


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0
    late_starts: int = 0  # requests the generator itself started > 1 ms after schedule


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class OpenLoop:
    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.template = body_template()
        self.idle: list[Connection] = []
        self.tally = Tally()

    def request(self) -> bytes:
        payload = body(self.template, str(uuid.uuid4()))
        head = (
            f"POST {self.target} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def connection(self) -> Connection:
        if self.idle:
            return self.idle.pop()
        self.tally.connections_opened += 1
        return await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), _CONNECT_TIMEOUT
        )

    async def one(self, scheduled: float) -> None:
        try:
            reader, writer = await self.connection()
            writer.write(self.request())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _ANSWER_TIMEOUT)
            status, length, keep = _parse_head(head)
            if length:
                await asyncio.wait_for(reader.readexactly(length), _ANSWER_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            name = type(exc).__name__
            self.tally.errors[name] = self.tally.errors.get(name, 0) + 1
            return
        self.tally.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()

    async def run(self, rate: float, duration: float) -> Tally:
        loop = asyncio.get_running_loop()
        total = int(rate * duration)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.05
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                self.tally.late_starts += 1
            task = loop.create_task(self.one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        for _, writer in self.idle:
            writer.close()
        return self.tally


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    return status, length, keep


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarize(tally: Tally, rate: float, duration: float) -> dict[str, Any]:
    values = sorted(tally.latencies_ms)
    return {
        "rate": rate,
        "duration_s": duration,
        "sent": int(rate * duration),
        "answered": len(values),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
        "connections_opened": tally.connections_opened,
        "late_starts": tally.late_starts,
        "p50_ms": percentile(values, 0.50),
        "p90_ms": percentile(values, 0.90),
        "p99_ms": percentile(values, 0.99),
        "p999_ms": percentile(values, 0.999),
        "max_ms": values[-1] if values else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="open-loop fixed-rate webhook load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    # The generator's own collector pauses would be counted as server latency.
    gc.disable()
    tally = uvloop.run(OpenLoop(args.url).run(args.rate, args.duration))
    sys.stdout.write(json.dumps(summarize(tally, args.rate, args.duration)) + "\n")


if __name__ == "__main__":
    main()
