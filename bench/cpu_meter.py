"""CPU used by processes during a benchmark run, from /proc (and getrusage for the
waited-for children: the load generator), in % of one core."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used by each watched process (and by waited-for children, i.e. the load
    generator) between start() and stop(), as % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._wall = 0.0

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["load generator"] = children_cpu_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["load generator"] = children_cpu_seconds()
        return {name: round(100 * (now[name] - self._start[name]) / wall, 1) for name in now}
