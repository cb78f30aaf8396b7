"""Configuration errors name the variable; service addresses become gRPC targets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devstack.processes import ROOT
from services.common.errors import InvalidInput
from services.common.grpc_client import channel_target


def _start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KOMMO_", "EDGE_", "N8N_"))}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_missing_variable_stops_the_service_with_one_line_naming_it() -> None:
    result = _start("services.vendedor", {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "configuration error: KOMMO_GATEWAY_ADDR: Field required"
    ]


def test_a_placeholder_api_key_is_refused() -> None:
    result = _start(
        "services.edge_api",
        {
            "EDGE_API_KEY": "changeme",
            "KOMMO_WEBHOOK_SECRET": "a-real-secret-of-some-length",
            "CONVERSATION_ADDR": "127.0.0.1:1",
            "KOMMO_GATEWAY_ADDR": "127.0.0.1:1",
            "VENDEDOR_ADDR": "127.0.0.1:1",
            "SCHEDULING_ADDR": "127.0.0.1:1",
        },
    )
    assert result.returncode != 0
    assert "configuration error: EDGE_API_KEY: Value error, must be a real secret" in result.stderr


def test_the_gateway_refuses_to_start_without_a_way_to_reach_customers() -> None:
    result = _start(
        "services.kommo_gateway",
        {"REDIS_URL": "redis://127.0.0.1:1/0", "KOMMO_SUBDOMAIN": "previdas"},
    )
    assert result.returncode != 0
    assert "KOMMO_SALESBOT_ID and KOMMO_REPLY_FIELD_ID are required" in result.stderr


@pytest.mark.parametrize(
    ("setting", "target"),
    [
        ("dns:///conversation:50051", "dns:///conversation:50051"),
        ("conversation:50051", "dns:///conversation:50051"),
        ("127.0.0.1:50061", "ipv4:127.0.0.1:50061"),
        ("127.0.0.1:50061, 127.0.0.1:50062", "ipv4:127.0.0.1:50061,127.0.0.1:50062"),
    ],
)
def test_service_addresses_become_targets_that_reach_every_replica(
    setting: str, target: str
) -> None:
    assert channel_target(setting) == target


def test_a_list_of_hostnames_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidInput, match="ip:port"):
        channel_target("a:1,b:2")


def test_a_signing_secret_that_is_not_base64_is_refused() -> None:
    result = _start(
        "services.conversation",
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "KOMMO_GATEWAY_ADDR": "127.0.0.1:1",
            "VENDEDOR_ADDR": "127.0.0.1:1",
            "EDGE_PUBLIC_URL": "http://edge",
            "N8N_WEBHOOK_URL": "http://n8n",
            "N8N_SIGNING_SECRET": "change-me",
        },
    )
    assert result.returncode != 0
    assert "configuration error: N8N_SIGNING_SECRET: Value error, must be 'whsec_'" in result.stderr
