"""gRPC client channels: every replica used (`round_robin`), every call with a deadline."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from services.common.errors import InvalidInput

# Metadata by which a caller tells the Kommo gateway its class on Kommo's shared budget:
# "operator" (the edge's test endpoints and settings pages) goes after customers' work.
KOMMO_PRIORITY_METADATA = "x-kommo-priority"


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


if TYPE_CHECKING:
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # the runtime class is not generic
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor


class DefaultDeadline(_UnaryUnaryInterceptor):
    """Gives every unary call a deadline when its caller did not set one.

    Not a service-config `timeout`: gRPC applies the smaller of that and the caller's
    own deadline, so a call that legitimately needs longer (a delivery waiting for a
    lead's reply slot, a sync reading every page) would be cut short.
    """

    def __init__(self, seconds: float, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._seconds = seconds
        self._metadata = list(metadata)

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        if client_call_details.timeout is None or self._metadata:
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                self._seconds
                if client_call_details.timeout is None
                else client_call_details.timeout,
                grpc.aio.Metadata(*(client_call_details.metadata or ()), *self._metadata),
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def create_channel(
    addresses: str, default_deadline_seconds: float, metadata: Sequence[tuple[str, str]] = ()
) -> grpc.aio.Channel:
    """A channel to every replica (`round_robin`), with a deadline on every unary call
    and `metadata` added to each.

    Long-lived streams (the webhook ingest stream) carry no deadline: each message on
    them is bounded by its sender instead.
    """
    service_config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        # A replica restarting (or not up yet) is waited for within the call's deadline
        # instead of failing the call at once.
        "methodConfig": [{"name": [{}], "waitForReady": True}],
    }
    return grpc.aio.insecure_channel(
        channel_target(addresses),
        options=[
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.enable_retries", 1),
            # Re-resolve DNS quickly so new replicas get traffic.
            ("grpc.dns_min_time_between_resolutions_ms", 5000),
            # Reconnect to a restarted replica within a second or so, not a minute.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
        interceptors=[DefaultDeadline(default_deadline_seconds, metadata)],  # type: ignore[list-item]
    )
