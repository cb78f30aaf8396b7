"""`GET /reports` over 13 months of a busy account (issue 23: ≤ 200 ms p99 over 13 months
× 50 vendedores), side by side with `GET /version` (the edge's cheapest authenticated
round trip) and `GET /stats` in the same run.

What runs: the whole stack as real processes (devstack: its own Redis, the Kommo sandbox,
the n8n stand-in, one replica of each service). Its Redis is seeded with a report day hash
for every day of the last `--months` months (services/conversation/reports.py's layout:
one field per counter and conversation owner), `--vendedores` vendedores each with
`--owners` (pipeline, stage) pairs a day, a dozen counters and the reply time's and n8n's
answer time's bins each, as the scripts write them. Then each query is asked once cold
(its settled months' and days' sums not yet kept) and `--repeat` times warm.

    bench/run.sh reports                         # 13 months × 50 vendedores
    python -m bench.reports_query --vendedores 100 --repeat 100
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from devstack.stack import Stack, StackConfig, start_stack
from services.common import reports as common
from services.conversation import reports, series

log = logging.getLogger("bench.reports")

COUNTERS = (
    "messages_customer",
    "messages_out",
    "messages_human",
    "conversations_started",
    "decision_answer",
    "decision_ignore",
    "takeovers_command",
    "takeovers_auto",
    "handoffs_ai",
    "handoffs_timeout",
    "resumes_auto",
    "replies",
)
QUERIES = {
    "vendedor": {"group_by": "vendedor"},
    "pipeline": {"group_by": "pipeline"},
    "stage": {"group_by": "stage"},
    "month": {"group_by": "month"},
    "week": {"group_by": "week"},
    "day": {"group_by": "day"},
    "vendedor, one pipeline": {"group_by": "vendedor", "pipeline": "8100002"},
    "day, one vendedor": {"group_by": "day", "vendedor": "10000007"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--months", type=int, default=13)
    parser.add_argument("--vendedores", type=int, default=50)
    parser.add_argument("--owners", type=int, default=3, help="(pipeline, stage) a vendedor a day")
    parser.add_argument("--repeat", type=int, default=50, help="warm requests per query")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def day_fields(rng: random.Random, vendedores: int, owners: int) -> dict[str, int]:
    """One busy day's report hash."""
    fields: dict[str, int] = {}
    for v in range(vendedores):
        vendedor = 10000002 + v
        for o in range(owners):
            pipeline = 8100001 + (v + o) % 4
            stage = 71000001 + (v * 7 + o) % 5
            whose = f"|{vendedor}|{pipeline}|{stage}|waba|{'form' if o == 2 else '-'}"
            for counter in COUNTERS:
                fields[counter + whose] = rng.randint(1, 40)
            for _ in range(15):
                fields[series.latency_field(rng.lognormvariate(1.2, 0.8)) + whose] = 1
            for _ in range(10):
                fields[reports.n8n_answer_field(rng.lognormvariate(0.3, 0.7)) + whose] = 1
    return fields


def seed(stack: Stack, args: argparse.Namespace, today: date) -> tuple[int, int]:
    client = redis.Redis.from_url(stack.redis_url)
    rng = random.Random(22)
    first = common.add_months(today, -args.months) or today
    days = (today - first).days + 1
    fields = 0
    pipe = client.pipeline(transaction=False)
    for i in range(days):
        values = day_fields(rng, args.vendedores, args.owners)
        key = common.day_key(reports.DAY_PREFIX, first + timedelta(days=i))
        pipe.hset(key, mapping=values)  # type: ignore[arg-type]
        pipe.expire(key, common.REPORT_SECONDS)
        fields += len(values)
        if i % 20 == 19:
            pipe.execute()
    pipe.execute()
    return days, fields


def timed(http: httpx.Client, path: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = http.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return elapsed


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max": round(ordered[-1], 1),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    log.info("starting the stack (logs in %s)", work)
    stack = start_stack(StackConfig(log_dir=work, env={"LOG_LEVEL": "WARNING"}))
    try:
        with httpx.Client(
            base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=60
        ) as http:
            today = date.fromisoformat(http.get("/reports").json()["to"])
            days, fields = seed(stack, args, today)
            log.info("seeded %d days, %d fields (%.0f a day)", days, fields, fields / days)
            first = common.add_months(today, -args.months) or today
            span = {"from": (first + timedelta(days=1)).isoformat(), "to": today.isoformat()}
            result: dict[str, Any] = {
                "settings": {**vars(args), "out": None, "days": days, "fields": fields},
                "range": span,
                "baseline": {},
                "reports": {},
            }
            for name, path in (("GET /version", "/version"), ("GET /stats", "/stats")):
                timed(http, path, {})
                result["baseline"][name] = figures(
                    [timed(http, path, {}) for _ in range(args.repeat)]
                )
            for name, params in QUERIES.items():
                wanted = {**params, **span}
                cold = timed(http, "/reports", wanted)
                warm = [timed(http, "/reports", wanted) for _ in range(args.repeat)]
                result["reports"][name] = {"cold_ms": round(cold, 1), **figures(warm)}
                log.info("%s: cold %.0f ms, warm %s", name, cold, figures(warm))
    finally:
        stack.stop()
    text = json.dumps(result, indent=2)
    out = args.out or Path("bench/results") / f"reports_query-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    sys.stdout.write(f"{text}\nresults: {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
