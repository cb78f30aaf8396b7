"""The edge's HTTP server bounds (services/edge_api/http_protocol.py) on a real uvicorn
server in this process, over real sockets: a request must arrive within the read timeout,
its line and headers within the size limit; nothing else is refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from services.edge_api.http_protocol import bounded_protocol

TIMEOUT = 0.5
LIMIT = 2048


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and says how long it was (/slow: after a while)."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(TIMEOUT * 2)  # an answer that takes longer than the timeout
    body = json.dumps({"size": size}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=bounded_protocol(TIMEOUT, LIMIT),
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=5,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    # Started and stopped by hand: serve() would take over the process's signals.
    await server.startup(sockets=[sock])
    try:
        yield sock.getsockname()
    finally:
        await server.shutdown(sockets=[sock])
        sock.close()


async def exchange(
    address: tuple[str, int],
    *parts: bytes,
    pause: float = 0.0,
    wait: float = 3.0,
    keep_sending: bool = False,
) -> tuple[bytes, float]:
    """Send the parts, `pause` apart, until the server answers (unless `keep_sending`) or
    closes; then read until it closes. What it answered and how long the connection
    lasted."""
    reader, writer = await asyncio.open_connection(*address)
    started = time.monotonic()
    answer = b""
    try:
        for n, part in enumerate(parts):
            if n and pause and keep_sending:
                await asyncio.sleep(pause)  # the answers wait in the socket
            elif n and pause:
                try:
                    got = await asyncio.wait_for(reader.read(65536), pause)
                except TimeoutError:
                    got = None
                if got is not None:
                    answer += got
                    break  # it answered, or closed: nothing more to send
            writer.write(part)
            await writer.drain()
        try:
            answer += await asyncio.wait_for(reader.read(), wait)
        except TimeoutError:
            answer += b"<still open>"
        return answer, time.monotonic() - started
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def get(path: str = "/", headers: bytes = b"", close: bool = True) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: t\r\n" + connection + headers + b"\r\n"


def post(body: bytes, close: bool = True) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return (
        b"POST / HTTP/1.1\r\nhost: t\r\n"
        + connection
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def test_a_plain_request_is_answered(address: tuple[str, int]) -> None:
    answer, _ = await exchange(address, get())
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_headers_that_never_end_get_408_within_the_timeout(
    address: tuple[str, int],
) -> None:
    drip = [b"GET / HTTP/1.1\r\nhost: t\r\n"] + [b"x"] * 30
    answer, lasted = await exchange(address, *drip, pause=0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request did not arrive within 0.5 s",
        "status": 408,
    }
    assert lasted < TIMEOUT + 1.0


async def test_a_connection_that_sends_nothing_is_closed(address: tuple[str, int]) -> None:
    answer, lasted = await exchange(address)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert TIMEOUT * 0.8 < lasted < TIMEOUT + 1.0


async def test_a_body_that_stops_arriving_is_cut_off(address: tuple[str, int]) -> None:
    head = b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n"
    answer, lasted = await exchange(address, head, b"0123456789")
    assert lasted < TIMEOUT + 1.0
    assert b"HTTP/1.1 200" not in answer


async def test_one_header_line_over_the_limit_is_431(address: tuple[str, int]) -> None:
    endless = b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * (LIMIT * 4)
    answer, _ = await exchange(address, endless)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b'"status": 431' in answer


async def test_many_headers_over_the_limit_arriving_in_pieces_are_431(
    address: tuple[str, int],
) -> None:
    pieces = [b"GET / HTTP/1.1\r\nhost: t\r\n"] + [
        b"x-h%d: %s\r\n" % (n, b"v" * 90) for n in range(40)
    ]
    answer, _ = await exchange(address, *pieces, pause=0.001)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


async def test_a_long_url_is_431(address: tuple[str, int]) -> None:
    answer, _ = await exchange(address, get("/" + "a" * (LIMIT * 2)))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


async def test_headers_under_the_limit_pass(address: tuple[str, int]) -> None:
    answer, _ = await exchange(address, get(headers=b"x-fine: " + b"a" * (LIMIT // 2) + b"\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_body_larger_than_the_header_limit_in_the_same_read_is_fine(
    address: tuple[str, int],
) -> None:
    answer, _ = await exchange(address, post(b"b" * (LIMIT * 20)))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'{"size": 40960}' in answer


async def test_each_request_of_a_kept_alive_connection_has_its_own_time(
    address: tuple[str, int],
) -> None:
    # Three requests 0.3 s apart: 0.9 s in all, each well within 0.5 s of its first byte.
    answer, _ = await exchange(
        address, get(close=False), get(close=False), get(), pause=TIMEOUT * 0.6, keep_sending=True
    )
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer


async def test_pipelined_requests_after_a_large_body_are_not_taken_for_headers(
    address: tuple[str, int],
) -> None:
    # One read: a request with a body over the header limit, and the start of the next
    # one; its headers end in the next read.
    first = post(b"b" * (LIMIT * 3), close=False)
    second = get()
    answer, _ = await exchange(
        address, first + second[:20], second[20:], pause=0.05, keep_sending=True
    )
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer


async def test_an_answer_may_take_longer_than_the_read_timeout(address: tuple[str, int]) -> None:
    # The timeout is for the request to arrive; once read whole, the answer takes its time.
    answer, lasted = await exchange(address, get("/slow"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert lasted >= TIMEOUT * 2
