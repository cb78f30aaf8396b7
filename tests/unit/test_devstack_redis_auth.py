"""`make run`'s own Redis has a password (issue 19, item 12): generated once, kept in the
state folder like the API key, in the URL every service gets, and never on a command
line. A real redis-server on a free port."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from devstack.__main__ import Settings, stack_config
from devstack.processes import free_port
from devstack.redis_server import RedisServer, RedisStartError
from devstack.state import RunState, StateDir

PASSWORD = "pw-of-this-test_0123456789"


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_a_password_protected_redis_refuses_clients_without_it(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "data", password=PASSWORD).start()
    bare = f"redis://127.0.0.1:{server.port}/0"
    try:
        assert server.url == f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        assert server.answers()
        assert ping(server.url)
        with pytest.raises(redis.AuthenticationError):
            ping(bare)
        assert server.process is not None
        command_line = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in command_line
        config = tmp_path / "data" / "auth.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        # Killed and started again (as the supervisor does), it still wants the password.
        server.kill()
        server.start()
        assert ping(server.url)
        with pytest.raises(redis.AuthenticationError):
            ping(bare)
    finally:
        server.stop()


def test_a_password_that_cannot_go_into_a_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RedisStartError):
        RedisServer(free_port(), tmp_path, password='a"b c')


def test_make_run_keeps_its_redis_password_like_its_key(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "run")
    settings = Settings(env={}, state_dir=state_dir.path, use_sandbox=True, scale={}, ports={})
    first = stack_config(settings, state_dir, RunState())
    assert len(first.redis_password) >= 32
    state_dir.save(RunState(api_key=first.api_key, redis_password=first.redis_password))
    again = stack_config(settings, state_dir, state_dir.load())
    assert again.redis_password == first.redis_password
    state_dir.wipe()
    clean = stack_config(settings, state_dir, state_dir.load())
    assert clean.redis_password not in ("", first.redis_password)
