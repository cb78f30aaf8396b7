"""What happens to requests before they reach an endpoint: the rate limit, injected faults,
and the record tests assert on."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.kommo.responses import JsonDict

# A 1-second sliding window: Kommo's limit is "requests per second".
WINDOW_SECONDS = 1.0
# Keeps a long demo run's memory bounded; tests read far fewer.
MAX_RECORDED_REQUESTS = 100_000


class SlidingWindowLimiter:
    """Admits at most ``rps`` requests in any 1-second window (0 = unlimited).

    Refused requests do not use up the allowance, but every arrival counts towards
    ``max_in_any_second``, the figure a client's pacing is judged by.
    """

    def __init__(self, rps: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rps = rps
        self._clock = clock
        self._admitted: collections.deque[float] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque()
        self.max_in_any_second = 0

    def admit(self) -> bool:
        now = self._clock()
        horizon = now - WINDOW_SECONDS
        for window in (self._admitted, self._arrivals):
            while window and window[0] <= horizon:
                window.popleft()
        self._arrivals.append(now)
        self.max_in_any_second = max(self.max_in_any_second, len(self._arrivals))
        if self.rps and len(self._admitted) >= self.rps:
            return False
        self._admitted.append(now)
        return True

    def reset(self) -> None:
        self._admitted.clear()
        self._arrivals.clear()
        self.max_in_any_second = 0


@dataclass
class FailRule:
    """The next ``remaining`` requests under ``path_prefix`` answer ``status``."""

    path_prefix: str
    status: int
    remaining: int
    # True: the endpoint still does its work (e.g. the Salesbot is started) before the error.
    apply_effect: bool = False
    method: str | None = None
    # With apply_effect: the error answers only once the work the request set going has
    # finished (the bot's message is in the chat and echoed), a 5xx strictly after sending.
    await_effect: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and path.startswith(self.path_prefix)
            and (self.method is None or self.method.upper() == method)
        )

    def as_json(self) -> JsonDict:
        return {
            "path_prefix": self.path_prefix,
            "status": self.status,
            "count": self.remaining,
            "apply_effect": self.apply_effect,
            "method": self.method,
            "await_effect": self.await_effect,
        }


@dataclass
class Faults:
    """The unkindness currently switched on by a test."""

    fail_next: list[FailRule] = field(default_factory=list)
    latency_ms: int = 0
    down: bool = False
    blocked: bool = False
    # 0 = never block; otherwise blocked after this many 429s since the last unblock.
    block_after_429s: int = 0
    refusals_since_unblock: int = 0

    def take(self, method: str, path: str) -> FailRule | None:
        for rule in self.fail_next:
            if rule.matches(method, path):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self.fail_next.remove(rule)
                return rule
        return None

    def note_rate_limited(self) -> None:
        self.refusals_since_unblock += 1
        if self.block_after_429s and self.refusals_since_unblock >= self.block_after_429s:
            self.blocked = True

    def set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        if not blocked:
            self.refusals_since_unblock = 0

    def as_json(self) -> JsonDict:
        return {
            "fail_next": [rule.as_json() for rule in self.fail_next],
            "latency_ms": self.latency_ms,
            "down": self.down,
            "blocked": self.blocked,
            "block_after_429s": self.block_after_429s,
        }


@dataclass(frozen=True)
class RecordedRequest:
    seq: int
    time: float
    method: str
    path: str
    query: str
    status: int

    def as_json(self) -> JsonDict:
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
        }


class TrafficLog:
    """Every request that reached the Kommo side of the sandbox (control calls excluded)."""

    def __init__(self) -> None:
        self.requests: collections.deque[RecordedRequest] = collections.deque(
            maxlen=MAX_RECORDED_REQUESTS
        )
        self.total = 0
        self.by_path: collections.Counter[str] = collections.Counter()
        # Refusals by the rate limiter only; an injected 429 is not counted here.
        self.rate_limited = 0

    def record(self, method: str, path: str, query: str, status: int, at: float) -> None:
        self.total += 1
        self.by_path[path] += 1
        self.requests.append(RecordedRequest(self.total, at, method, path, query, status))

    def since(self, seq: int) -> list[RecordedRequest]:
        return [request for request in self.requests if request.seq > seq]

    def reset(self) -> None:
        self.requests.clear()
        self.total = 0
        self.by_path.clear()
        self.rate_limited = 0
