"""The webhook ack benchmark's report: the medians (throughput) and worst rounds (latency)
of the runs, the bar they are held to (bench/README.md), the Markdown table, the profile's
summary and the machine the run was on."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench import profiling
from bench.webhook_ack_runs import Settings
from bench.wrk import WrkResult

BAR_RATIO = 1.00  # bridge req/s ≥ 100 % of bare
BAR_P50_MS = 5.0  # at a steady 300 req/s
BAR_P99_MS = 15.0
BAR_MAX_MS = 250.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(wrk_runs: list[WrkResult], open_runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for side in ("bare", "bridge"):
        runs = [r for r in wrk_runs if r.side == side and r.label.startswith("round")]
        opens = [r for r in open_runs if r["side"] == side]
        summary[side] = {
            "requests_per_s": _median([r.requests_per_s for r in runs]),
            "ok_per_s": _median([r.ok_per_s for r in runs]),
            "p50_ms": _median([r.p50_ms for r in runs]),
            "p99_ms": _median([r.p99_ms for r in runs]),
            "non_2xx": sum(r.non_2xx for r in runs),
            "cpu_percent": {
                name: _median([r.cpu_percent[name] for r in runs])
                for name in (runs[0].cpu_percent if runs else {})
            },
            "open_loop": {
                # The worst of the rounds: the bar is about every run, not a lucky one.
                "p50_ms": max((r["p50_ms"] for r in opens), default=float("nan")),
                "p99_ms": max((r["p99_ms"] for r in opens), default=float("nan")),
                "max_ms": max((r["max_ms"] for r in opens), default=float("nan")),
                "non_2xx": sum(
                    n for r in opens for s, n in r["statuses"].items() if not s.startswith("2")
                ),
                "errors": sum(sum(r["errors"].values()) for r in opens),
            },
        }
    bare, bridge = summary["bare"], summary["bridge"]
    # 2xx answers only: a fast 503 must not count as throughput.
    summary["ratio"] = bridge["ok_per_s"] / bare["ok_per_s"]
    pairs = [
        (a.ok_per_s, b.ok_per_s)
        for a, b in zip(
            [r for r in wrk_runs if r.side == "bare" and r.label.startswith("round")],
            [r for r in wrk_runs if r.side == "bridge" and r.label.startswith("round")],
            strict=True,
        )
    ]
    summary["ratio_per_round"] = [round(b / a, 3) for a, b in pairs]
    opened = bridge["open_loop"]
    summary["bar"] = {
        "throughput >= 100 % of bare": summary["ratio"] >= BAR_RATIO,
        f"p50 <= {BAR_P50_MS:g} ms at the fixed rate": opened["p50_ms"] <= BAR_P50_MS,
        f"p99 <= {BAR_P99_MS:g} ms at the fixed rate": opened["p99_ms"] <= BAR_P99_MS,
        f"max <= {BAR_MAX_MS:g} ms at the fixed rate": opened["max_ms"] <= BAR_MAX_MS,
        "no non-2xx answers": bridge["non_2xx"] == 0 and opened["non_2xx"] == 0,
    }
    return summary


def markdown(summary: dict[str, Any], settings: Settings, machine: dict[str, Any]) -> str:
    bare, bridge = summary["bare"], summary["bridge"]
    ob, og = bare["open_loop"], bridge["open_loop"]
    lines = [
        f"### Webhook ack — {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"downstream {settings.downstream}, appendfsync {settings.appendfsync}",
        "",
        f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration:g}s, "
        f"{settings.rounds} alternating rounds (medians); open loop {settings.rate:g} req/s "
        f"× {settings.rate_duration:g} s, {settings.latency_rounds} rounds (worst).",
        "",
        "| | bare FastAPI + parse_qsl | bridge (durable ack) | bridge / bare |",
        "|---|---:|---:|---:|",
        f"| 2xx req/s | {bare['ok_per_s']:,.0f} | {bridge['ok_per_s']:,.0f} "
        f"| **{100 * summary['ratio']:.0f} %** |",
        f"| all answers req/s | {bare['requests_per_s']:,.0f} | {bridge['requests_per_s']:,.0f} "
        f"| {bridge['requests_per_s'] / bare['requests_per_s']:.2f} |",
        f"| p50 (wrk) | {bare['p50_ms']:.2f} ms | {bridge['p50_ms']:.2f} ms "
        f"| {bridge['p50_ms'] / bare['p50_ms']:.2f} |",
        f"| p99 (wrk) | {bare['p99_ms']:.2f} ms | {bridge['p99_ms']:.2f} ms "
        f"| {bridge['p99_ms'] / bare['p99_ms']:.2f} |",
        f"| non-2xx (all rounds) | {bare['non_2xx']} | {bridge['non_2xx']} | |",
        f"| {settings.rate:g} req/s p50 | {ob['p50_ms']:.2f} ms | {og['p50_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s p99 | {ob['p99_ms']:.2f} ms | {og['p99_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s max | {ob['max_ms']:.2f} ms | {og['max_ms']:.2f} ms | |",
        f"| {settings.rate:g} req/s non-2xx / errors | {ob['non_2xx']} / {ob['errors']} "
        f"| {og['non_2xx']} / {og['errors']} | |",
        "",
        "Ratio per round: " + ", ".join(f"{100 * r:.0f} %" for r in summary["ratio_per_round"]),
        "",
        "CPU under wrk (% of one core, medians): bare "
        + ", ".join(f"{k} {v:.0f}" for k, v in bare["cpu_percent"].items())
        + "; bridge "
        + ", ".join(f"{k} {v:.0f}" for k, v in bridge["cpu_percent"].items()),
        "",
        "The bar (bench/README.md):",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in summary["bar"].items()]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.splitlines()[0] if wrk_version else "",
    }


def profile_markdown(profiled: dict[str, Any]) -> str:
    load = profiled["load"]
    lines = [
        "",
        f"### Profile of the bridge under wrk ({load['requests_per_s']:,.0f} req/s while sampled)",
        "",
    ]
    for name in ("edge_api", "conversation"):
        if name in profiled:
            lines.append(profiling.markdown(name, profiled[name]))
        else:
            lines += [f"{name}: no profile: {profiled['failures'].get(name, '?')[:300]}", ""]
    return "\n".join(lines)
