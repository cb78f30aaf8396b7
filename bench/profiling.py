"""Sampling profiles of running services with py-spy, summarised from its collapsed
stacks ("frame;frame;… count" lines, `--format raw`).

py-spy is a developer tool, not a dependency (`.venv/bin/pip install py-spy`); without
it the benchmark skips the profile. Native frames are on (`--native`), so time in the
kernel (socket writes) and in gRPC's C core shows as such instead of being charged to
the Python line that called it; that needs py-spy to pause the process for each sample,
which slows it a little: the profile says where time goes, not how fast it goes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# A thread blocked in one of these is waiting for work, not using the CPU.
_IDLE_LEAVES = frozenset({"epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect"})
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Which package a sample belongs to: the innermost frame that is Python code (or a
# compiled module standing for a package); C frames of the interpreter, libc and the
# event loop are skipped, so a syscall counts for the code that made it.
_AREAS = (
    ("uvicorn", "uvicorn + httptools"),
    ("httptools", "uvicorn + httptools"),
    ("fastapi", "fastapi + starlette"),
    ("starlette", "fastapi + starlette"),
    ("grpc", "grpc"),
    ("protobuf", "protobuf"),
    ("_message", "protobuf"),
    ("redis/", "redis-py"),
    ("asyncio", "asyncio"),
    ("json", "json"),
    ("urllib", "urllib.parse"),
    ("dataclasses", "dataclasses.asdict"),
    ("copy.py", "dataclasses.asdict"),
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(
    spy: str, pid: int, duration: float, output: Path, *, native: bool = True
) -> subprocess.Popen[bytes]:
    """Sample `pid` for `duration` s. native=False samples Python frames only and without
    pausing the process (`--nonblocking`): the timing of a latency run stays close to an
    unprofiled one, at the price of syscalls being charged to the Python line above them."""
    how = ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            f"{duration:g}",
            "--rate",
            "100",
            *how,
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frame(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame, without the line number."""
    match = _FRAME.match(frame)
    return (match.group("func"), match.group("file")) if match else (frame, "")


def _is_code(file: str) -> bool:
    return file.endswith(".py") or "cygrpc" in file or "_message" in file or file == "_json.c"


def _area(frames: list[tuple[str, str]]) -> str:
    for _, file in reversed(frames):
        if not _is_code(file):
            continue
        if file.startswith(("services/", "bench/")):
            return file
        for needle, area in _AREAS:
            if needle in file:
                return area
        return f"other Python ({file})"
    return f"native ({frames[-1][1]})"


def summarize(raw: str, top: int = 20) -> dict[str, Any]:
    """Shares of the *active* samples (idle waits left out), by area, by syscall, by
    function (self) and by project function (inclusive)."""
    areas: Counter[str] = Counter()
    syscalls: Counter[str] = Counter()
    own: Counter[str] = Counter()
    project: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        leaf, leaf_file = frames[-1]
        if leaf in _IDLE_LEAVES:
            idle += count
            continue
        areas[_area(frames)] += count
        own[f"{leaf} ({leaf_file})"] += count
        if leaf_file.startswith("libc"):
            syscalls[leaf] += count
        for name in {f"{func} ({file})" for func, file in frames if file.startswith("services/")}:
            project[name] += count
    active = total - idle

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * n / active, 1)) for k, n in counter.most_common(top)] if active else []
        )

    return {
        "samples": total,
        "active_samples": active,
        "idle_percent_of_samples": round(100 * idle / total, 1) if total else 0.0,
        "by_area_percent": share(areas),
        "libc_leaf_percent": share(syscalls),
        "self_percent": share(own),
        "project_inclusive_percent": share(project),
    }


def markdown(name: str, data: dict[str, Any], top: int = 10) -> str:
    lines = [
        f"**{name}** — {data['active_samples']} active samples "
        f"({data['idle_percent_of_samples']} % of all samples were idle waits); "
        "shares of the active time:",
        "",
        "by area (a syscall counts for the code that made it): "
        + "; ".join(f"{k} {v} %" for k, v in data["by_area_percent"][:top]),
        "",
        "in libc (mostly syscalls): "
        + "; ".join(f"{k} {v} %" for k, v in data["libc_leaf_percent"][:6]),
        "",
        "project functions, inclusive: "
        + "; ".join(f"{k} {v} %" for k, v in data["project_inclusive_percent"][:top]),
        "",
    ]
    return "\n".join(lines)
