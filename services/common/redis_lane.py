"""The Lua scripts of a process, over one pipelined connection (issue 22).

Every state change of the bridge is a Lua script, and redis-py spends about 100 µs of
CPU on each call before the server sees it (the pool's condition and timeout, its
observability hooks, the retry wrapper, packing in Python); the socket round trip
itself costs under half of that. Redis answers a connection's commands in the order it
received them, so one connection can carry every script call of a process at once:

- a call is packed by hiredis, queued, and written with the others of the same turn of
  the event loop in one write; the reader task hands each reply to the oldest waiting
  call;
- the connection is made by redis-py's own `Connection` (URL, TLS, AUTH, SELECT are
  what they are for every other command) and then read and written here;
- a connection that breaks, or that has not answered its oldest call within the
  socket timeout, fails every call it carries with redis-py's `ConnectionError` /
  `TimeoutError`, and the next call makes a new one. A failed call is tried again by
  the pool's own `Retry`, as its other commands are: every script of
  the bridge is safe to repeat (dedupe keys, applied-sets, leases, owner checks);
- a `NOSCRIPT` (a Redis restarted, failed over or flushed) loads the script and runs it
  again, as redis-py does.

Blocking commands (XREADGROUP … BLOCK, BLPOP) never come here: they would hold up every
call behind them. Everything else still goes through redis-py's pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

_READ_SIZE = 65536


def _pack(args: tuple[Any, ...]) -> bytes:
    """The command in Redis' protocol, packed by hiredis exactly as redis-py's encoder
    would (str as UTF-8, numbers by their repr); anything else (None, bool, a list) is
    refused as redis-py refuses it."""
    try:
        packed: bytes = hiredis.pack_command(args)
        return packed
    except TypeError as exc:
        raise DataError(f"Invalid input: {exc} Convert it first.") from None


@dataclass
class RawConnection:
    """A connection redis-py made (URL, TLS, AUTH and SELECT as for every command), read
    and written directly, its replies parsed by hiredis (also services/common/queue_watch.py)."""

    connection: AbstractConnection
    stream: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: Any

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection is being dropped anyway
            await self.connection.disconnect(nowait=True)


async def open_raw(pool: aioredis.ConnectionPool) -> RawConnection:
    connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.connect()  # type: ignore[no-untyped-call]
        stream, writer = connection._reader, connection._writer
        if stream is None or writer is None:
            raise RedisConnectionError("Redis connection not open")
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
    return RawConnection(connection, stream, writer, parser)


class _Wire:
    """One connection and the calls waiting on it, oldest first."""

    def __init__(self, raw: RawConnection, timeout: float | None) -> None:
        self.raw = raw
        self._timeout = timeout
        self._writer = raw.writer
        self._stream = raw.stream
        self._parser = raw.parser
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.broken: BaseException | None = None
        self._closing: asyncio.Task[None] | None = None
        self._reader = self._loop.create_task(self._read(), name="redis-lane-reader")

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.broken is not None:
            future.set_exception(self.broken)
            return future
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        deadline = self._loop.time() + self._timeout if self._timeout else 0.0
        self._waiting.append((future, deadline))
        if self._timer is None and self._timeout:
            self._timer = self._loop.call_at(deadline, self._check_oldest)
        return future

    def _flush(self) -> None:
        if self.broken is not None or not self._out:
            return
        out, self._out = self._out, []
        try:
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))
        except (OSError, RuntimeError) as exc:
            self.fail(RedisConnectionError(f"Error while writing to Redis: {exc}"))

    def _check_oldest(self) -> None:
        self._timer = None
        if not self._waiting or self.broken is not None:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_oldest)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._stream.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                self._parser.feed(data)
                while (reply := self._parser.gets()) is not False:
                    if not self._waiting:
                        raise InvalidResponse("Redis answered a call nobody made")
                    future, _ = self._waiting.popleft()
                    if future.done():  # its caller gave up; the reply keeps the order
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except (RedisConnectionError, InvalidResponse) as exc:
            self.fail(exc)
        except Exception as exc:  # an OSError from the socket, a protocol error
            self.fail(RedisConnectionError(f"Error while reading from Redis: {exc}"))

    def fail(self, error: BaseException) -> None:
        """Break the connection: every waiting call fails with `error`."""
        if self.broken is not None:
            return
        self.broken = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._out = []
        if asyncio.current_task() is not self._reader:
            self._reader.cancel()
        self._closing = self._loop.create_task(self._close(), name="redis-lane-close")

    async def _close(self) -> None:
        await self.raw.close()

    async def aclose(self) -> None:
        self.fail(RedisConnectionError("Redis lane closed"))
        with contextlib.suppress(BaseException):  # cancelled or failed: closed either way
            await self._reader
        await self._close()


class RedisLane:
    """A process's script calls, pipelined over one connection of `pool`'s kind."""

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        # The pool's own retry (services/common/redis.py): a call is tried again as any
        # other command of the process is.
        self._retry: Retry = pool.connection_kwargs.get("retry") or Retry(NoBackoff(), 0)
        self._wire: _Wire | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def _connected(self) -> _Wire:
        wire = self._wire
        if wire is not None and wire.broken is None:
            return wire
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            wire = self._wire
            if wire is not None and wire.broken is None:
                return wire
            if self._closed:
                raise RedisConnectionError("Redis lane closed")
            raw = await open_raw(self._pool)
            timeout = self._pool.connection_kwargs.get("socket_timeout")
            self._wire = wire = _Wire(raw, timeout)
            return wire

    async def execute(self, *args: Any) -> Any:
        """Run one command on the lane, tried again on a broken connection."""
        packed = _pack(args)
        return await self._retry.call_with_retry(
            lambda: self._once(packed), self._give_up_if_closed
        )

    async def _once(self, packed: bytes) -> Any:
        wire = await self._connected()
        return await wire.call(packed)

    async def _give_up_if_closed(self, error: Exception) -> None:
        if self._closed:
            raise error

    async def aclose(self) -> None:
        self._closed = True
        if self._wire is not None:
            await self._wire.aclose()
            self._wire = None


class LaneScript(AsyncScript):
    """A registered script whose calls go over the process's lane; given a `client` (a
    pipeline), it is queued there as redis-py would."""

    def __init__(self, client: aioredis.Redis, script: str | bytes, lane: RedisLane) -> None:
        super().__init__(client, script)
        self._lane = lane

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        if client is not None:
            return await super().__call__(keys, args, client)
        keys = keys or []
        values = (*keys, *(args or ()))
        try:
            return await self._lane.execute("EVALSHA", self.sha, len(keys), *values)
        except NoScriptError:
            self.sha = await self._lane.execute("SCRIPT", "LOAD", self.script)
            if isinstance(self.sha, bytes):
                self.sha = self.sha.decode()
            return await self._lane.execute("EVALSHA", self.sha, len(keys), *values)


class BridgeRedis(aioredis.Redis):
    """redis-py's client, with the scripts it registers run over a `RedisLane`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lane = RedisLane(self.connection_pool)

    def register_script(self, script: Any) -> LaneScript:  # type: ignore[override]
        return LaneScript(self, script, self.lane)

    async def aclose(self, close_connection_pool: bool | None = True) -> None:
        """Close the lane and, unless told otherwise, the pool (create_redis made it for
        this client alone)."""
        await self.lane.aclose()
        await super().aclose(close_connection_pool)
