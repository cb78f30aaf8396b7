"""Service addresses become gRPC targets that reach every replica. (How a configuration
error is reported: test_config_errors.py.)"""

from __future__ import annotations

import pytest

from services.common.errors import InvalidInput
from services.common.grpc_client import channel_target


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
