"""One answer shared by every caller for a short while (what /health serves)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedResult(Generic[T]):
    """`compute()` run at most once at a time and its result reused for `ttl` seconds
    after it finished: any number of callers cost one computation per period. Callers
    arriving while it runs wait for that same run. A caller that goes away (its request
    cancelled) does not cancel the run the others wait for. A failure is not kept: the
    next caller tries again."""

    def __init__(
        self,
        compute: Callable[[], Awaitable[T]],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._ttl = ttl
        self._clock = clock
        self._value: T | None = None
        self._expires = float("-inf")
        self._running: asyncio.Future[T] | None = None

    async def get(self) -> T:
        """The last result while it is younger than `ttl`, else a new one."""
        if self._value is not None and self._clock() < self._expires:
            return self._value
        return await self.fresh()

    async def fresh(self) -> T:
        """A result computed now (or by the run under way, joined), kept for `get`."""
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
            # Read even when every caller went away: no "exception never retrieved".
            self._running.add_done_callback(_retrieve)
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            value = await self._compute()
            self._value = value
            self._expires = self._clock() + self._ttl
            return value
        finally:
            self._running = None


def _retrieve(future: asyncio.Future[T]) -> None:
    if not future.cancelled():
        future.exception()
