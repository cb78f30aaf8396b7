"""wrk's output read into figures: requests a second (all answers and 2xx only), latency
percentiles, non-2xx answers and socket errors; the CPU each process used is filled in by
whoever ran wrk."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    side: str
    label: str
    requests_per_s: float  # every answer, as wrk counts them
    ok_per_s: float  # 2xx answers only: what the comparison uses
    requests: int
    elapsed_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    cpu_percent: dict[str, float] = field(default_factory=dict)
    raw: str = ""


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, side: str, label: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return match

    percentiles = {
        int(m.group(1)): _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.MULTILINE)
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    done = find(r"^\s+(\d+) requests in ([\d.]+\w+),")
    requests, elapsed_s = int(done.group(1)), _ms(done.group(2)) / 1000
    failed = int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        side=side,
        label=label,
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        ok_per_s=(requests - failed) / elapsed_s,
        requests=requests,
        elapsed_s=elapsed_s,
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        max_ms=_ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)").group(1)),
        non_2xx=failed,
        socket_errors=(
            dict(
                zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
            )
            if errors
            else {}
        ),
        raw=output,
    )
