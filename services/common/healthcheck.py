"""`python -m services.common.healthcheck HOST:PORT` — exit 0 when the gRPC server at
HOST:PORT answers SERVING to the standard health check (used by docker compose)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_TIMEOUT_SECONDS = 3.0


def check(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=_TIMEOUT_SECONDS
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m services.common.healthcheck HOST:PORT")
    sys.exit(0 if check(sys.argv[1]) else 1)
