"""Every variable a service reads is documented in .env.example."""

from __future__ import annotations

import re

import pytest

from devstack.processes import ROOT
from services.common.settings import CommonSettings
from services.conversation.settings import ConversationSettings
from services.edge_api.settings import EdgeSettings
from services.kommo_gateway.settings import GatewaySettings
from services.scheduling.settings import SchedulingSettings
from services.vendedor.settings import VendedorSettings

DOCUMENTED = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))


@pytest.mark.parametrize(
    "settings",
    [
        CommonSettings,
        ConversationSettings,
        EdgeSettings,
        GatewaySettings,
        SchedulingSettings,
        VendedorSettings,
    ],
)
def test_every_setting_is_in_env_example(settings: type[CommonSettings]) -> None:
    variables = {name.upper() for name in settings.model_fields}
    assert variables - DOCUMENTED == set()
