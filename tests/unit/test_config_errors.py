"""A configuration a service cannot use stops it at start with one line per problem, naming
the variables and saying what to set — never a traceback, never an empty name, never the
value (it may be a secret)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings

from devstack.processes import ROOT
from services.common.settings import ConfigurationError, configuration_errors

LINE = re.compile(r"^configuration error: [A-Z][A-Z0-9_]*(, [A-Z][A-Z0-9_]*)*: \S.*$")

GATEWAY_OK = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "KOMMO_SUBDOMAIN": "previdas",
    "KOMMO_SALESBOT_ID": "7001",
    "KOMMO_REPLY_FIELD_ID": "900001",
}
CONVERSATION_OK = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "KOMMO_GATEWAY_ADDR": "127.0.0.1:1",
    "VENDEDOR_ADDR": "127.0.0.1:1",
    "EDGE_PUBLIC_URL": "https://edge",
    "N8N_WEBHOOK_URL": "http://n8n/webhook/bridge",
    "N8N_AUTH_HEADER": "X-Bridge-Token: a-real-token-for-n8n",
}


def start(module: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m <module>` with only `env` (and a `.env` only if `cwd` holds one)."""
    return subprocess.run(
        [sys.executable, "-m", module],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the service said, after checking it said it the way every service must."""
    assert result.returncode != 0, "the service started"
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for line in lines:
        assert LINE.match(line), line
    return lines


def test_a_missing_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    result = start("services.vendedor", {"REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    assert error_lines(result) == [
        "configuration error: KOMMO_GATEWAY_ADDR: required: set it in the environment or "
        "in .env (see .env.example)"
    ]


def test_an_invalid_value_is_one_line_naming_the_variable_without_echoing_it(
    tmp_path: Path,
) -> None:
    result = start("services.kommo_gateway", {**GATEWAY_OK, "KOMMO_RATE_LIMIT_RPS": "x7"}, tmp_path)
    (line,) = error_lines(result)
    assert line.startswith("configuration error: KOMMO_RATE_LIMIT_RPS: ")
    assert "x7" not in line


def test_a_secret_that_is_too_short_is_named_and_never_shown(tmp_path: Path) -> None:
    result = start(
        "services.edge_api",
        {
            "EDGE_API_KEY": "short-key-1234",
            "KOMMO_WEBHOOK_SECRET": "a-real-secret-of-some-length",
            "CONVERSATION_ADDR": "127.0.0.1:1",
            "KOMMO_GATEWAY_ADDR": "127.0.0.1:1",
            "VENDEDOR_ADDR": "127.0.0.1:1",
            "SCHEDULING_ADDR": "127.0.0.1:1",
        },
        tmp_path,
    )
    (line,) = error_lines(result)
    assert line.startswith("configuration error: EDGE_API_KEY: must be a real secret")
    assert "short-key-1234" not in result.stderr


def test_a_check_across_variables_names_every_variable_it_is_about(tmp_path: Path) -> None:
    env = {k: v for k, v in GATEWAY_OK.items() if not k.endswith("_ID")}
    (line,) = error_lines(start("services.kommo_gateway", env, tmp_path))
    assert line.startswith("configuration error: KOMMO_SALESBOT_ID, KOMMO_REPLY_FIELD_ID: ")
    assert "set KOMMO_SALESBOT_ID to your Salesbot's id" in line
    assert "set KOMMO_REPLY_FIELD_ID to the id of the lead field" in line


def test_one_missing_id_of_the_pair_is_named_alone(tmp_path: Path) -> None:
    env = {**GATEWAY_OK, "KOMMO_REPLY_FIELD_ID": ""}
    (line,) = error_lines(start("services.kommo_gateway", env, tmp_path))
    assert line.startswith("configuration error: KOMMO_REPLY_FIELD_ID: set KOMMO_REPLY_FIELD_ID")


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PROACTIVE_HOURS", "8-20", "PROACTIVE_HOURS, PROACTIVE_DAYS"),
        ("PROACTIVE_ON_STATUS", "won", "PROACTIVE_ON_STATUS"),
        ("N8N_WEBHOOK_URL", "", "N8N_WEBHOOK_URL, N8N_REPLY_WEBHOOK_URL"),
        ("BRIDGE_TIMEZONE", "America/Nowhere", "BRIDGE_TIMEZONE"),
    ],
)
def test_the_conversation_service_names_what_its_checks_refuse(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    result = start("services.conversation", {**CONVERSATION_OK, variable: value}, tmp_path)
    (line,) = error_lines(result)
    assert line.startswith(f"configuration error: {named}: ")


def test_a_signing_secret_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    env = {**CONVERSATION_OK, "N8N_SIGNING_SECRET": "change-me"}
    (line,) = error_lines(start("services.conversation", env, tmp_path))
    assert line.startswith("configuration error: N8N_SIGNING_SECRET: must be 'whsec_'")


def test_scheduling_refuses_to_start_without_an_n8n_webhook(tmp_path: Path) -> None:
    env = {
        **CONVERSATION_OK,
        "CONVERSATION_ADDR": "127.0.0.1:1",
        "N8N_WEBHOOK_URL": "",
    }
    (line,) = error_lines(start("services.scheduling", env, tmp_path))
    assert line.startswith("configuration error: N8N_WEBHOOK_URL, N8N_SCHEDULING_WEBHOOK_URL: ")


def test_env_example_copied_as_is_names_every_placeholder_and_the_step_that_fills_it(
    tmp_path: Path,
) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    placeholders = set(
        re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    wiring = {  # what docker compose and `make run` set themselves
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "CONVERSATION_ADDR": "127.0.0.1:1",
        "KOMMO_GATEWAY_ADDR": "127.0.0.1:1",
        "VENDEDOR_ADDR": "127.0.0.1:1",
        "SCHEDULING_ADDR": "127.0.0.1:1",
    }
    named: set[str] = set()
    for service in ("kommo_gateway", "edge_api", "conversation", "scheduling"):
        for line in error_lines(start(f"services.{service}", wiring, tmp_path)):
            variables, _, advice = line.removeprefix("configuration error: ").partition(": ")
            named.update(variables.split(", "))
            assert re.search(r"guide step \d|secrets\.token_urlsafe", advice), line
    # The gateway checks the Salesbot pair once the account itself is set (guide steps 1-2).
    filled = tmp_path / "filled"
    filled.mkdir()
    env_file = (tmp_path / ".env").read_text()
    for variable, value in {
        "KOMMO_SUBDOMAIN": "previdas",
        "KOMMO_CLIENT_ID": "integration-id",
        "KOMMO_CLIENT_SECRET": "integration-secret",
        "KOMMO_REDIRECT_URI": "https://bridge.previdas.com.br/oauth/callback",
    }.items():
        env_file = re.sub(rf"^{variable}=.*$", f"{variable}={value}", env_file, flags=re.M)
    (filled / ".env").write_text(env_file)
    (line,) = error_lines(start("services.kommo_gateway", wiring, filled))
    assert "guide step 3" in line
    named.update(line.removeprefix("configuration error: ").partition(": ")[0].split(", "))
    assert named == placeholders


def test_a_check_that_forgets_to_name_its_variables_still_names_its_settings() -> None:
    class Odd(BaseSettings):
        config_error_probe: int = 0

        @model_validator(mode="after")
        def _check(self) -> Odd:
            raise ValueError("a and b disagree")

    class Named(BaseSettings):
        config_error_probe: int = 0

        @model_validator(mode="after")
        def _check(self) -> Named:
            raise ConfigurationError(("A", "B"), "set B when A is set")

    with pytest.raises(ValidationError) as odd:
        Odd()
    with pytest.raises(ValidationError) as named:
        Named()
    assert configuration_errors(odd.value, "Odd") == [
        "configuration error: Odd: a and b disagree (see .env.example)"
    ]
    assert configuration_errors(named.value, "Named") == [
        "configuration error: A, B: set B when A is set"
    ]
