"""uvicorn's httptools protocol with the two bounds it lacks: how long a request may take
to arrive, and how large its line and headers may be.

uvicorn only times out an idle keep-alive connection: a client that opens a connection
and sends nothing, or sends its headers a byte at a time (slowloris), holds it forever,
and httptools buffers a header of any length. Here every request must arrive whole
(line, headers and body) within `read_timeout` seconds of its first byte, or of the
connection opening for the first request: else 408 (when nothing has been answered on
it yet) and the connection is closed. A request line and headers over
`max_header_bytes` are answered 431 and the connection closed. Both answers are the API's
one error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# What each header costs besides its name and value: ": " and CRLF.
_HEADER_OVERHEAD = 4


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the API's error shape, closing the connection."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    read_timeout: float = 10.0
    max_header_bytes: int = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._idle = True  # no request begun since the last one was read whole
        self._in_headers = False  # a request has begun and its headers are not complete
        self._requests_begun = 0
        # Two lower bounds of the size of the headers being read (the parts the parser
        # handed over, _count; the reads that held nothing else, data_received): each is
        # held against the limit.
        self._parsed_bytes = 0
        self._read_bytes = 0
        self._headers_too_large = False

    # The read deadline.

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _answering(self) -> bool:
        """A response of this connection is under way (pipelined request behind it)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._idle or self._in_headers:
            if self._answering():
                # The next request waits (reading is paused) behind one being answered:
                # its time starts when it may be read.
                self._arm()
                return
            log.info(
                "connection closed: no whole request line and headers within %g s",
                self.read_timeout,
            )
            self.transport.write(
                raw_error(
                    408,
                    "Request Timeout",
                    f"the request did not arrive within {self.read_timeout:g} s",
                )
            )
        else:
            # Headers done, body still arriving: the application sees a disconnect.
            log.info("connection closed: the body did not arrive within %g s", self.read_timeout)
        self.transport.close()

    # Protocol and parser callbacks.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle, in_headers, begun = self._idle, self._in_headers, self._requests_begun
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        started = self._requests_begun - begun
        if (in_headers and started == 0) or (idle and started == 1):
            # This read holds only the headers of one request, not complete yet: count
            # all of it, including a part the parser holds back (a header line not ended
            # yet), which _count cannot see. (A read that also ends an earlier request is
            # left to _count: at most one read more is held.)
            self._read_bytes += len(data)
            if self._read_bytes > self.max_header_bytes:
                self._refuse_large_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._idle = False
        self._in_headers = True
        self._requests_begun += 1
        self._parsed_bytes = self._read_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + _HEADER_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._idle = True
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error 400; the one raised by _count is a 431.
        if self._headers_too_large:
            self._refuse_large_headers()
            return
        super().send_400_response(msg)

    # The header limit.

    def _count(self, size: int) -> None:
        """Each part as the parser hands it over (several per read); raising stops the
        parser at the part that goes over (uvicorn then calls send_400_response)."""
        self._parsed_bytes += size
        if self._parsed_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise ValueError("request headers too large")

    def _refuse_large_headers(self) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        log.info("request refused: line and headers over %d bytes", self.max_header_bytes)
        if not self._answering():
            self.transport.write(
                raw_error(
                    431,
                    "Request Header Fields Too Large",
                    f"the request line and headers are over {self.max_header_bytes} bytes",
                )
            )
        self.transport.close()


def bounded_protocol(read_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn builds per connection, with these bounds."""
    timeout, limit = read_timeout, max_header_bytes

    class Configured(BoundedHttpToolsProtocol):
        read_timeout = timeout
        max_header_bytes = limit

    return Configured
