"""Keeping `make run`'s processes up, as an orchestrator would (compose's `restart:
unless-stopped`): a process that dies — Redis or any service, the sandbox, the stand-in —
is said loudly (an ERROR line) and started again on the same port (Redis on the same data
folder, replaying its AOF), after a bounded backoff. When restarts keep failing, the
supervisor gives up and the runner stops everything with the reason.

Non-blocking: `tick()` looks at every process once and returns, so Ctrl-C is never stuck
behind a process that is slow to come back.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devstack.processes import Launcher, Process, describe_exit
from devstack.redis_server import RedisServer
from devstack.stack import Stack

log = logging.getLogger("devstack")


@dataclass(frozen=True)
class RestartPolicy:
    # Wait before the 1st, 2nd, … restart in a row; the last value repeats.
    backoff_seconds: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    # Restarts in a row that did not hold, after which everything stops.
    max_restarts: int = 5
    # A process up this long has recovered: its next death starts the count afresh.
    stable_after_seconds: float = 30.0
    # A restarted process that does not answer within this is killed and counts as failed.
    ready_timeout_seconds: float = 30.0

    def backoff(self, attempt: int) -> float:
        return self.backoff_seconds[min(attempt, len(self.backoff_seconds)) - 1]


class GaveUp(RuntimeError):
    """A process kept failing; the message is the one line the runner prints."""


class Unit(Protocol):
    """One supervised process."""

    @property
    def name(self) -> str: ...

    @property
    def where(self) -> str: ...  # port (and data) it comes back on, for the messages

    @property
    def log_path(self) -> Path | None: ...

    def alive(self) -> bool: ...

    def exit_description(self) -> str: ...

    def launch(self) -> None: ...

    def ready(self) -> bool: ...

    def kill(self) -> None: ...


class RedisUnit:
    def __init__(self, server: RedisServer) -> None:
        self._server = server

    @property
    def name(self) -> str:
        return "redis"

    @property
    def where(self) -> str:
        return f"port {self._server.port} with its data in {self._server.data_dir} (AOF)"

    @property
    def log_path(self) -> Path | None:
        return self._server.log_path

    def alive(self) -> bool:
        return self._server.alive()

    def exit_description(self) -> str:
        return describe_exit(self._server.returncode)

    def launch(self) -> None:
        self._server.launch()

    def ready(self) -> bool:
        return self._server.answers()

    def kill(self) -> None:
        self._server.kill()


class ProcessUnit:
    """A process of the stack; after a restart it follows the new one."""

    def __init__(self, stack: Stack, process: Process) -> None:
        self._stack = stack
        self.process = process

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def where(self) -> str:
        return f"port {self.process.port}"

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path

    def alive(self) -> bool:
        return self.process.alive()

    def exit_description(self) -> str:
        return describe_exit(self.process.popen.poll())

    def launch(self) -> None:
        self.process = self._stack.relaunch(self.process)

    def ready(self) -> bool:
        return Launcher.ready(self.process)

    def kill(self) -> None:
        if self.process.alive():
            self.process.popen.kill()
            self.process.popen.wait()


def stack_units(stack: Stack) -> list[Unit]:
    units: list[Unit] = [RedisUnit(stack.redis)] if stack.redis is not None else []
    units += [ProcessUnit(stack, process) for process in stack.launcher.processes]
    return units


class _State(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting"  # backing off before the next start
    STARTING = "starting"


@dataclass
class _Watch:
    unit: Unit
    since: float
    state: _State = _State.RUNNING
    failures: int = 0  # restarts in a row that did not hold
    at: float = 0.0  # WAITING: when to start; STARTING: when to give up waiting


class Supervisor:
    def __init__(
        self,
        units: Sequence[Unit],
        policy: RestartPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        now = clock()
        self._watches = [_Watch(unit, since=now) for unit in units]

    def tick(self) -> None:
        """Look at every process once; raises GaveUp when one keeps failing."""
        for watch in self._watches:
            now = self._clock()
            if watch.state is _State.RUNNING:
                if not watch.unit.alive():
                    if now - watch.since >= self._policy.stable_after_seconds:
                        watch.failures = 0
                    log.error(
                        "%s died (%s): restarting it on %s; log: %s",
                        watch.unit.name,
                        watch.unit.exit_description(),
                        watch.unit.where,
                        watch.unit.log_path,
                    )
                    self._failed(watch, now, watch.unit.exit_description())
            elif watch.state is _State.WAITING:
                if now >= watch.at:
                    self._launch(watch, now)
            elif not watch.unit.alive():
                log.error(
                    "%s did not come back (%s); log: %s",
                    watch.unit.name,
                    watch.unit.exit_description(),
                    watch.unit.log_path,
                )
                self._failed(watch, now, watch.unit.exit_description())
            elif watch.unit.ready():
                log.warning("%s is back on %s", watch.unit.name, watch.unit.where)
                watch.state, watch.since = _State.RUNNING, now
            elif now >= watch.at:
                watch.unit.kill()
                reason = f"no answer within {self._policy.ready_timeout_seconds:.0f} s"
                log.error("%s did not come back (%s)", watch.unit.name, reason)
                self._failed(watch, now, reason)

    def _launch(self, watch: _Watch, now: float) -> None:
        try:
            watch.unit.launch()
        except OSError as exc:
            log.error("%s could not be started: %s", watch.unit.name, exc)
            self._failed(watch, now, str(exc))
            return
        watch.state, watch.at = _State.STARTING, now + self._policy.ready_timeout_seconds

    def _failed(self, watch: _Watch, now: float, reason: str) -> None:
        watch.failures += 1
        if watch.failures > self._policy.max_restarts:
            raise GaveUp(
                f"{watch.unit.name} keeps failing ({reason}; {self._policy.max_restarts} "
                f"restarts did not hold): stopping everything; log: {watch.unit.log_path}"
            )
        delay = self._policy.backoff(watch.failures)
        watch.state, watch.at = _State.WAITING, now + delay
