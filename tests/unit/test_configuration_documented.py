"""Every variable a service reads is documented: in .env.example (the file to copy) and in
docs/configuration.md (the reference)."""

from __future__ import annotations

import re

import pytest

from devstack.__main__ import PORT_VARIABLES
from devstack.processes import GRPC_SERVICES, ROOT
from services.common.settings import CommonSettings
from services.conversation.settings import ConversationSettings
from services.edge_api.settings import EdgeSettings
from services.kommo_gateway.settings import GatewaySettings
from services.scheduling.settings import SchedulingSettings
from services.vendedor.settings import VendedorSettings

SETTINGS = [
    CommonSettings,
    ConversationSettings,
    EdgeSettings,
    GatewaySettings,
    SchedulingSettings,
    VendedorSettings,
]
IN_ENV_EXAMPLE = set(
    re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
)
REFERENCE = ROOT / "docs" / "configuration.md"
# What docker-compose.yml substitutes from .env (${NAME}).
IN_COMPOSE = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))


def in_reference_tables(text: str) -> set[str]:
    """The variables a table row of the reference names in its first column."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first_column = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_column))
    return names


IN_REFERENCE = in_reference_tables(REFERENCE.read_text())


@pytest.mark.parametrize("settings", SETTINGS)
def test_every_setting_is_in_env_example(settings: type[CommonSettings]) -> None:
    variables = {name.upper() for name in settings.model_fields}
    assert variables - IN_ENV_EXAMPLE == set()


@pytest.mark.parametrize("settings", SETTINGS)
def test_every_setting_is_in_the_configuration_reference(settings: type[CommonSettings]) -> None:
    variables = {name.upper() for name in settings.model_fields}
    assert variables - IN_REFERENCE == set()


def test_the_reference_names_only_variables_that_exist() -> None:
    # A variable renamed or removed in the code must leave the reference too. Besides the
    # services' settings: what `make run` reads (ports, state folder, replicas) and what
    # docker-compose.yml substitutes (${NAME}).
    read = {name.upper() for settings in SETTINGS for name in settings.model_fields}
    runner = {*PORT_VARIABLES.values(), "RUN_STATE_DIR"}
    scale = {f"SCALE_{name.upper()}" for name in GRPC_SERVICES}
    assert IN_REFERENCE - read - runner - scale - IN_COMPOSE == set()


def test_what_docker_compose_reads_is_in_the_reference() -> None:
    assert IN_COMPOSE - IN_REFERENCE == set()


def test_the_table_parser_reads_the_first_column_only() -> None:
    rows = "| `A_B`, `C_D` | 1 | not `E_F` |\n| variable | default | meaning |\n"
    assert in_reference_tables(rows) == {"A_B", "C_D"}
