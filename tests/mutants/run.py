"""`make mutants`: one-line mutations of the code that carries the bridge's guarantees,
each of which the tests it names must catch (tests/README.md).

The project is copied (without .venv, .run, .git and caches; with the generated `bridge/`
code) to a temporary directory once; each mutation is applied there, its tests run there
with this checkout's .venv python, and the file is restored. The working tree is never
touched: other work runs its tests from it meanwhile.

    python tests/mutants/run.py                  # every mutation
    python tests/mutants/run.py NAME [NAME...]   # only these
    python tests/mutants/run.py --list           # the mutations, with what they break
    python tests/mutants/run.py --baseline ...   # first run the named tests unmutated
    python tests/mutants/run.py -v ...           # show the end of each run's output

Exit status 0 only when every mutation selected was killed; 1 when one survived, or a
snippet is not found exactly once, or a named test does not exist.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).resolve().parent / "mutations.toml"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_TIMEOUT_SECONDS = 600.0

# Never copied: the environment, run state, history and caches (bridge/, generated, is).
_IGNORED = shutil.ignore_patterns(
    ".venv",
    ".run",
    ".git",
    ".lockvenv",
    ".n8n-check",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
    "results",
)

# pytest's exit codes: 1 = tests failed (the mutation is killed); 4 = usage error (a node
# id that does not exist); 5 = nothing collected. Anything else is an error of the run.
_TESTS_FAILED = 1


def say(text: str = "", *, end: str = "\n", err: bool = False) -> None:
    """The runner's report, as it goes (stderr for what went wrong)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + end)
    stream.flush()


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    guarantee: str
    tests: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT_SECONDS


@dataclass
class Outcome:
    mutation: Mutation
    status: str  # killed | survived | timeout | error
    seconds: float
    detail: str = ""
    failed: list[str] = field(default_factory=list)
    output: str = ""


def load(spec: Path = SPEC) -> list[Mutation]:
    """The mutations of the spec, in its order; names are unique."""
    with spec.open("rb") as handle:
        data = tomllib.load(handle)
    mutations = [
        Mutation(
            name=str(entry["name"]),
            file=str(entry["file"]),
            original=str(entry["original"]),
            replacement=str(entry["replacement"]),
            guarantee=str(entry["guarantee"]),
            tests=tuple(str(t) for t in entry["tests"]),
            timeout=float(entry.get("timeout", DEFAULT_TIMEOUT_SECONDS)),
        )
        for entry in data["mutation"]
    ]
    names = [m.name for m in mutations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"mutation names used twice: {', '.join(duplicates)}")
    return mutations


def snippet_problem(mutation: Mutation, root: Path = ROOT) -> str:
    """Why the mutation cannot be applied to the code under `root` ('' if it can)."""
    path = root / mutation.file
    if not path.is_file():
        return f"{mutation.file} does not exist"
    count = path.read_text(encoding="utf-8").count(mutation.original)
    if count != 1:
        return f"its snippet occurs {count} times in {mutation.file} (must be exactly once)"
    if mutation.original == mutation.replacement:
        return "its replacement is its snippet"
    return ""


def copy_project(target: Path) -> Path:
    copy = target / "project"
    shutil.copytree(ROOT, copy, ignore=_IGNORED, symlinks=True)
    if not (copy / "bridge").is_dir():
        raise SystemExit("bridge/ (the generated gRPC code) is missing: run `make protos`")
    return copy


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """pytest on `tests` in the copy: (exit code, or None on timeout; its output's tail)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [str(VENV_PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests]
    try:
        done = subprocess.run(  # our own interpreter and test ids
            command,
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out[-2000:]
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def _failed_tests(output: str) -> list[str]:
    return [
        line.split(" ", 2)[1]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR ")) and len(line.split(" ")) > 1
    ]


def mutate(copy: Path, mutation: Mutation) -> Outcome:
    path = copy / mutation.file
    original = path.read_text(encoding="utf-8")
    problem = snippet_problem(mutation, copy)
    if problem:
        return Outcome(mutation, "error", 0.0, problem)
    path.write_text(original.replace(mutation.original, mutation.replacement), encoding="utf-8")
    started = time.monotonic()
    try:
        code, output = run_tests(copy, mutation.tests, mutation.timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - started
    if code is None:
        # Hung under the mutation: the tests did not pass, but say so apart.
        detail = f"no result in {mutation.timeout:.0f} s"
        return Outcome(mutation, "timeout", seconds, detail, output=output)
    if code == 0:
        return Outcome(mutation, "survived", seconds, "every named test passed", output=output)
    if code == _TESTS_FAILED:
        return Outcome(mutation, "killed", seconds, failed=_failed_tests(output), output=output)
    return Outcome(mutation, "error", seconds, f"pytest exited {code}:\n{output}")


def baseline(copy: Path, mutations: list[Mutation]) -> bool:
    """The named tests pass on the code as it is (else a kill proves nothing)."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    say(f"baseline: {len(tests)} tests unmutated …")
    started = time.monotonic()
    code, output = run_tests(copy, tests, DEFAULT_TIMEOUT_SECONDS * 2)
    say(f"baseline: exit {code} in {time.monotonic() - started:.0f} s")
    if code != 0:
        say(output)
    return code == 0


def table(outcomes: list[Outcome], total: float) -> str:
    width = max(len(o.mutation.name) for o in outcomes)
    lines = [f"{'mutation':<{width}}  {'result':<8}  {'seconds':>7}  detail"]
    for o in outcomes:
        detail = o.detail.splitlines()[0] if o.detail else ", ".join(o.failed[:2])
        lines.append(f"{o.mutation.name:<{width}}  {o.status:<8}  {o.seconds:7.1f}  {detail}")
    killed = sum(o.status in ("killed", "timeout") for o in outcomes)
    lines.append(
        f"score: {killed}/{len(outcomes)} killed "
        f"({sum(o.status == 'timeout' for o in outcomes)} by timeout), "
        f"{sum(o.status == 'survived' for o in outcomes)} survived, "
        f"{sum(o.status == 'error' for o in outcomes)} errors; {total:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations")
    parser.add_argument(
        "--spec", type=Path, default=SPEC, help="another list of mutations (same format)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--baseline", action="store_true", help="first check the named tests pass unmutated"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the end of each run's output"
    )
    args = parser.parse_args(argv)
    mutations = load(args.spec)
    if args.list:
        for m in mutations:
            say(f"{m.name}: {m.file}\n    {m.guarantee}\n    tests: {' '.join(m.tests)}")
        return 0
    unknown = sorted(set(args.names) - {m.name for m in mutations})
    if unknown:
        say(f"unknown mutations: {', '.join(unknown)} (see --list)", err=True)
        return 2
    chosen = [m for m in mutations if not args.names or m.name in args.names]
    stale = [(m.name, p) for m in chosen if (p := snippet_problem(m))]
    for name, problem in stale:
        say(f"{name}: {problem}: update {args.spec}", err=True)
    if stale:
        return 1
    if not VENV_PYTHON.exists():
        say(f"{VENV_PYTHON} is missing: run `make test` once", err=True)
        return 1
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = copy_project(Path(tmp))
        if args.baseline and not baseline(copy, chosen):
            say("the named tests fail unmutated: fix them first", err=True)
            return 1
        for n, mutation in enumerate(chosen, 1):
            say(f"[{n}/{len(chosen)}] {mutation.name} … ", end="")
            outcome = mutate(copy, mutation)
            outcomes.append(outcome)
            say(f"{outcome.status} ({outcome.seconds:.0f} s)")
            if outcome.status == "error":
                say(outcome.detail, err=True)
            elif args.verbose:
                say(outcome.output)
    say()
    say(table(outcomes, time.monotonic() - started))
    return 0 if all(o.status in ("killed", "timeout") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
