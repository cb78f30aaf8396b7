"""gRPC client channels: every replica used (`round_robin`), every call with a deadline."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import grpc

from services.common.errors import InvalidInput


def channel_target(addresses: str) -> str:
    """Turn a service address setting into a gRPC target.

    Accepts a resolver target (`dns:///conversation:50051`, whose every A record is a
    replica under docker compose --scale) or a comma-separated list of `ip:port`
    (`127.0.0.1:50061,127.0.0.1:50062`, what the local runner starts).
    """
    addresses = addresses.strip()
    if not addresses:
        raise InvalidInput("empty service address")
    if "://" in addresses or addresses.startswith(("ipv4:", "ipv6:", "unix:")):
        return addresses
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if len(parts) == 1 and not _is_ip_port(parts[0]):
        return f"dns:///{parts[0]}"
    for part in parts:
        if not _is_ip_port(part):
            raise InvalidInput(f"{part!r}: a list of addresses must be ip:port entries")
    return "ipv4:" + ",".join(parts)


def _is_ip_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def create_channel(
    addresses: str,
    default_deadline_seconds: float,
    long_lived: Sequence[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """A channel to every replica, with a deadline on every method.

    `long_lived` names (service, method) pairs of streams that stay open for the life
    of the process; they get no deadline (each message on them is bounded by its
    sender instead), or they would be torn down every few seconds.
    """
    method_config: list[dict[str, Any]] = [
        {"name": [{}], "timeout": f"{default_deadline_seconds:.3f}s"}
    ]
    if long_lived:
        method_config.insert(
            0, {"name": [{"service": service, "method": method} for service, method in long_lived]}
        )
    service_config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": method_config,
    }
    return grpc.aio.insecure_channel(
        channel_target(addresses),
        options=[
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.enable_retries", 1),
            # Re-resolve DNS quickly so new replicas get traffic.
            ("grpc.dns_min_time_between_resolutions_ms", 5000),
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
