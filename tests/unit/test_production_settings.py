"""Outside the Kommo sandbox (KOMMO_SANDBOX unset) the services that post to n8n refuse
what would hand the bridge's API key to someone else (issue 19, items 6 and 12): no way
for n8n to tell the bridge's envelopes from forged ones (neither N8N_SIGNING_SECRET nor
N8N_AUTH_HEADER), or a callback address over plain http."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.common.settings import configuration_errors, is_loopback_url
from services.conversation.settings import ConversationSettings
from services.edge_api.settings import EdgeSettings
from services.scheduling.settings import SchedulingSettings
from tests.unit.test_config_errors import CONVERSATION_OK, error_lines, start

SIGNING_SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
N8N_SERVICES: list[type[BaseSettings]] = [ConversationSettings, SchedulingSettings]
WIRING = {
    "redis_url": "redis://127.0.0.1:1/0",
    "kommo_gateway_addr": "127.0.0.1:1",
    "vendedor_addr": "127.0.0.1:1",
    "conversation_addr": "127.0.0.1:1",
    "n8n_webhook_url": "https://n8n.internal/webhook/bridge",
    "edge_public_url": "https://bridge.internal",
}
AUTH_LINE = (
    "configuration error: N8N_SIGNING_SECRET, N8N_AUTH_HEADER: outside the Kommo sandbox "
    "n8n must be able to refuse envelopes that are not the bridge's: set N8N_SIGNING_SECRET"
)


@pytest.fixture(autouse=True)
def _no_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes: none of the developer's variables."""
    for cls in N8N_SERVICES:
        for name in cls.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)


def build(cls: type[BaseSettings], **values: Any) -> list[str]:
    """The configuration lines the settings refuse with; [] when they are accepted."""
    try:
        cls(_env_file=None, **{**WIRING, **values})
    except ValidationError as exc:
        return configuration_errors(exc, cls.__name__)
    return []


@pytest.mark.parametrize("cls", N8N_SERVICES)
def test_without_the_sandbox_n8n_must_be_able_to_verify_the_envelopes(
    cls: type[BaseSettings],
) -> None:
    (line,) = build(cls)
    assert line.startswith(AUTH_LINE)
    assert "N8N_AUTH_HEADER (the Webhook node's Header Auth)" in line
    assert build(cls, n8n_signing_secret=SIGNING_SECRET) == []
    assert build(cls, n8n_auth_header="X-Bridge-Token: a-real-token-for-n8n") == []
    assert build(cls, kommo_sandbox=True) == []


@pytest.mark.parametrize("cls", N8N_SERVICES)
def test_a_missing_n8n_address_is_named_before_its_authentication(
    cls: type[BaseSettings],
) -> None:
    (line,) = build(cls, n8n_webhook_url="")
    assert line.startswith("configuration error: N8N_WEBHOOK_URL, ")


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("X-Bridge-Token: change-me", "set N8N_AUTH_HEADER's value to a real secret"),
        ("X-Bridge-Token", "must be 'Name: value'"),
        ("X-Bridge-Token: ", "must be 'Name: value'"),
        (": a-real-token", "must be 'Name: value'"),
    ],
)
def test_an_auth_header_that_cannot_authenticate_is_refused_without_echoing_it(
    header: str, says: str
) -> None:
    (line,) = build(ConversationSettings, n8n_auth_header=header, kommo_sandbox=True)
    assert line.startswith(f"configuration error: N8N_AUTH_HEADER: {says}")
    assert "a-real-token" not in line


@pytest.mark.parametrize("cls", N8N_SERVICES)
@pytest.mark.parametrize(
    ("url", "sandbox", "accepted"),
    [
        ("https://bridge.internal", False, True),
        ("http://bridge.internal", False, False),
        ("http://edge_api:8000", False, False),
        ("http://10.0.0.5:8000", False, False),
        ("HTTP://bridge.internal", False, False),
        ("http://bridge.internal", True, True),  # the sandbox: `make run`, the tests
        # Loopback: n8n on the same machine; the key never crosses a network.
        ("http://127.0.0.1:8000", False, True),
        ("http://localhost:8000", False, True),
        ("http://[::1]:8000", False, True),
        ("bridge.internal", True, False),  # no scheme: not an address n8n can call
        ("ftp://bridge.internal", False, False),
    ],
)
def test_the_public_url_n8n_sends_the_key_to_is_https_outside_the_sandbox(
    cls: type[BaseSettings], url: str, sandbox: bool, accepted: bool
) -> None:
    lines = build(cls, edge_public_url=url, kommo_sandbox=sandbox, n8n_auth_header="X: yz")
    if accepted:
        assert lines == []
    else:
        (line,) = lines
        assert line.startswith("configuration error: EDGE_PUBLIC_URL: must be")


def test_loopback_means_this_machine_only() -> None:
    assert is_loopback_url("http://127.0.0.53:1/x")
    assert is_loopback_url("http://LOCALHOST:8000/x")
    assert not is_loopback_url("http://127.0.0.1.nip.io/x")
    assert not is_loopback_url("http://localhost.example.com/x")


@pytest.mark.parametrize("service", ["conversation", "scheduling"])
def test_the_service_does_not_start_and_says_so_in_one_line(tmp_path: Path, service: str) -> None:
    env = {k: v for k, v in CONVERSATION_OK.items() if k != "N8N_AUTH_HEADER"}
    env["CONVERSATION_ADDR"] = "127.0.0.1:1"
    (line,) = error_lines(start(f"services.{service}", env, tmp_path))
    assert line.startswith(AUTH_LINE)
    (line,) = error_lines(
        start(f"services.{service}", {**env, "EDGE_PUBLIC_URL": "http://edge"}, tmp_path)
    )
    assert line.startswith("configuration error: EDGE_PUBLIC_URL: must be https outside")


@pytest.mark.parametrize(
    ("url", "sandbox", "accepted"),
    [
        ("https://bridge.previdas.com.br", False, True),
        ("http://bridge.previdas.com.br", False, False),
        ("http://bridge.previdas.com.br", True, True),
        ("http://localhost:8000", False, True),
    ],
)
def test_the_edges_public_url_is_https_outside_the_sandbox(
    monkeypatch: pytest.MonkeyPatch, url: str, sandbox: bool, accepted: bool
) -> None:
    for name in EdgeSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    values: dict[str, Any] = {
        **WIRING,
        "scheduling_addr": "127.0.0.1:1",
        "edge_api_key": "k" * 32,
        "kommo_webhook_secret": "s" * 32,
        "edge_public_url": url,
        "kommo_sandbox": sandbox,
    }
    lines = build(EdgeSettings, **values)
    if accepted:
        assert lines == []
    else:
        (line,) = lines
        assert line.startswith("configuration error: EDGE_PUBLIC_URL: must be https outside")
