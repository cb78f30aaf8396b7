"""SANDBOX_SALESBOT_ECHO_AUTHOR: how the sandbox tags a Salesbot's echo webhook."""

from __future__ import annotations

import pytest

from sandbox.kommo.config import ConfigError, config_from_env


def test_salesbot_echoes_are_the_bots_unless_told_to_be_a_users() -> None:
    assert config_from_env({}).salesbot_echo_author == "bot"
    assert config_from_env({"SANDBOX_SALESBOT_ECHO_AUTHOR": "user"}).salesbot_echo_author == "user"
    with pytest.raises(ConfigError, match="SANDBOX_SALESBOT_ECHO_AUTHOR"):
        config_from_env({"SANDBOX_SALESBOT_ECHO_AUTHOR": "robot"})
