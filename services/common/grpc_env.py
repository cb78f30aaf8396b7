"""gRPC core's settings, put in the environment before gRPC is loaded: each service's
`__main__` imports this module first.

GRPC_EXPERIMENTS: grpc 1.85 serves and calls through its EventEngine by default; turned
off here, a unary call costs this process 25–35 % less CPU (bench/README.md, issue 22's
CPU per message). An operator's own GRPC_EXPERIMENTS wins (GRPC_EXPERIMENTS="" keeps
gRPC's defaults).
"""

from __future__ import annotations

import os

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"

os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
