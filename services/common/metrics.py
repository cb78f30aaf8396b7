"""Prometheus metrics shared by every service: gRPC calls by method and code, and the
few domain figures an operator watches (queues, retries, Kommo, tokens).

Each gRPC service serves them on `METRICS_HOST`:`METRICS_PORT` (0 = off; the host follows
`GRPC_HOST` unless set); the edge on `GET /metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

GRPC_REQUESTS = Counter("bridge_grpc_requests_total", "gRPC calls served", ["method", "code"])
GRPC_SECONDS = Histogram(
    "bridge_grpc_request_seconds",
    "Time to serve a gRPC call",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_REQUESTS = Counter(
    "bridge_http_requests_total", "HTTP requests answered by the edge", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "bridge_http_request_seconds",
    "Time to answer an HTTP request at the edge",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_REFUSALS = Counter(
    "bridge_webhook_refusals_total",
    "Kommo webhook bodies refused (scope=body) and items of stored bodies skipped "
    "(scope=item), by reason (the edge counts them; the conversation service logs each)",
    ["scope", "reason"],
)
N8N_DELIVERIES = Counter("bridge_n8n_deliveries_total", "Envelopes POSTed to n8n", ["outcome"])
KOMMO_REQUESTS = Counter("bridge_kommo_requests_total", "Calls to Kommo", ["status"])
TOKEN_REFRESHES = Counter("bridge_kommo_token_refreshes_total", "Kommo token refreshes")
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Work waiting in a queue", ["queue"])
BOT_STATES = Gauge("bridge_conversations", "Conversations by bot state", ["bot_state"])


def serve_metrics(port: int, host: str) -> None:
    """Expose this process's metrics on `host`:`port` (a thread of prometheus_client).

    `host` is written as for gRPC (`[::]`, `127.0.0.1`); the brackets are gRPC's syntax.
    """
    if port:
        start_http_server(port, addr=host.removeprefix("[").removesuffix("]"))
