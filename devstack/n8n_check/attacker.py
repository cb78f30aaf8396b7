"""The attacker of `make n8n-check`: a local HTTP listener that a forged envelope names
as its `callback.url` and `scheduling.status_callback.url`. It answers 200 to anything
and records each request (method, path and header names: never a value, since a value
could be the bridge's key). The workflow passes when it never received anything.

It listens on 127.0.0.1, the host the bridge's key credential is allowed to reach, so
a request kept away from it was kept away by the workflow itself (its URLs come from
BRIDGE_URL), not by the credential's domain restriction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devstack.processes import free_port


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    header_names: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.method} {self.path} (headers: {', '.join(self.header_names)})"


class Attacker:
    """Started on a free port of 127.0.0.1 in a thread of this process."""

    def __init__(self) -> None:
        self._received: list[Received] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)  # read, never kept: it may hold a token
                entry = Received(
                    self.command,
                    self.path.split("?")[0],
                    tuple(sorted({name.lower() for name in self.headers})),
                )
                with owner._lock:
                    owner._received.append(entry)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _record

            def log_message(self, format: str, *args: object) -> None:
                return  # nothing on the check's output; `received` says it all

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="attacker", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Attacker:
        self._thread.start()
        return self

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
