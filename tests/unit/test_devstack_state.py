"""The runner's state folder and its supervisor's restart policy."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devstack.state import RunState, StateDir, StateError
from devstack.supervisor import GaveUp, RestartPolicy, Supervisor


def test_state_is_saved_readable_by_its_owner_only_and_loaded_back(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "run")
    saved = RunState(
        api_key="k" * 32, n8n_api_key="n" * 32, webhook_secret="s" * 32, ports={"edge": 8000}
    )
    state_dir.save(saved)
    assert stat.S_IMODE(state_dir.state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.path.stat().st_mode) == 0o700
    assert state_dir.load() == saved


def test_no_state_file_is_a_first_run(tmp_path: Path) -> None:
    assert StateDir(tmp_path / "run").load() == RunState()


@pytest.mark.parametrize(
    "content", ["{not json", '{"ports": {"edge": "x"}}', '{"ports": {"edge": 70000}}']
)
def test_a_damaged_state_file_is_refused_saying_what_to_do(tmp_path: Path, content: str) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.state_file.write_text(content)
    with pytest.raises(StateError, match="make run-clean"):
        state_dir.load()


def test_wipe_removes_the_state_and_the_redis_data_but_keeps_the_logs(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.save(RunState(api_key="key"))
    (state_dir.redis_data / "appendonlydir").mkdir(parents=True)
    log_dir = state_dir.new_log_dir()
    log_dir.mkdir(parents=True)
    assert set(state_dir.wipe()) == {state_dir.state_file, state_dir.redis_data}
    assert not state_dir.state_file.exists()
    assert not any(state_dir.redis_data.iterdir())
    assert stat.S_IMODE(state_dir.redis_data.stat().st_mode) == 0o700
    assert log_dir.exists()
    assert state_dir.load() == RunState()


def test_two_runners_never_share_one_state_folder(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    with state_dir.locked():
        with pytest.raises(StateError, match="RUN_STATE_DIR"), StateDir(tmp_path).locked():
            pass
    with state_dir.locked():  # released when the first runner is done
        pass


class FlakyUnit:
    """A process that dies at once each time it is started, or comes up and stays."""

    def __init__(self, comes_back: bool) -> None:
        self.comes_back = comes_back
        self.running = True
        self.launches = 0

    name = "flaky"
    where = "port 1"
    log_path = None

    def alive(self) -> bool:
        return self.running

    def exit_description(self) -> str:
        return "exit code 3"

    def launch(self) -> None:
        self.launches += 1
        self.running = self.comes_back

    def ready(self) -> bool:
        return self.running

    def kill(self) -> None:
        self.running = False


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_ticks(supervisor: Supervisor, clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        clock.now += 0.1
        supervisor.tick()


def test_a_dead_process_is_restarted_after_a_backoff() -> None:
    unit, clock = FlakyUnit(comes_back=True), Clock()
    supervisor = Supervisor([unit], RestartPolicy(backoff_seconds=(1.0,)), clock)
    unit.running = False
    run_ticks(supervisor, clock, 0.5)
    assert unit.launches == 0  # still backing off
    run_ticks(supervisor, clock, 1.0)
    assert unit.launches == 1 and unit.alive()


def test_restarts_that_keep_failing_stop_everything_with_the_reason() -> None:
    unit, clock = FlakyUnit(comes_back=False), Clock()
    policy = RestartPolicy(backoff_seconds=(0.5, 1.0), max_restarts=3)
    supervisor = Supervisor([unit], policy, clock)
    unit.running = False
    with pytest.raises(GaveUp, match=r"flaky keeps failing \(exit code 3; 3 restarts"):
        run_ticks(supervisor, clock, 60)
    assert unit.launches == 3


def test_a_process_that_held_long_enough_gets_its_restarts_back() -> None:
    unit, clock = FlakyUnit(comes_back=True), Clock()
    policy = RestartPolicy(backoff_seconds=(0.1,), max_restarts=1, stable_after_seconds=5)
    supervisor = Supervisor([unit], policy, clock)
    for _ in range(3):  # each crash after a stable spell is a first failure again
        run_ticks(supervisor, clock, 6)
        unit.running = False
        run_ticks(supervisor, clock, 1)
    assert unit.launches == 3
