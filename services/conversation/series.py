"""Counters over time, for the operator's dashboard: fixed five-minute buckets in Redis.

Every counter the service keeps (messages in and out, takeovers, handoffs, dead
letters...) is also added to the bucket of the moment it happened, and every reply's
latency goes into that bucket's histogram. A bucket is one Redis hash that expires on
its own after a day, so the series costs a bounded amount of memory whatever the
traffic, and any replica can add to it.

Every latency figure (the day's median, a window's p50 and p95, each bucket's) comes
from these histograms, read at once: two figures over the same replies always agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BUCKET_SECONDS = 300
KEPT_SECONDS = 25 * 3600
MAX_HOURS = 24

# Upper bounds (seconds) of the reply latency histogram; one more field counts the rest.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.25,
    0.5,
    1,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    90,
    120,
    300,
)
REPLIES = "replies"
REPLY_MS_SUM = "reply_ms_sum"
OVERFLOW = "reply_le_inf"


def bucket_key(start: int) -> str:
    return f"conv:series:{start}"


def bucket_start(unix_seconds: float) -> int:
    return int(unix_seconds // BUCKET_SECONDS) * BUCKET_SECONDS


def bucket_starts(now: float, hours: int) -> list[int]:
    """The buckets covering the last `hours`, oldest first, the current one last."""
    last = bucket_start(now)
    count = max(1, math.ceil(hours * 3600 / BUCKET_SECONDS))
    return [last - BUCKET_SECONDS * i for i in range(count - 1, -1, -1)]


def latency_field(seconds: float) -> str:
    for bound in LATENCY_BOUNDS:
        if seconds <= bound:
            return f"reply_le_{bound:g}"
    return OVERFLOW


def _is_latency(name: str) -> bool:
    return name.startswith("reply_le_") or name in (REPLIES, REPLY_MS_SUM)


@dataclass(frozen=True)
class Bucket:
    start: int
    counters: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    reply_mean_seconds: float = 0.0
    reply_p50_seconds: float = 0.0
    reply_p95_seconds: float = 0.0


def quantile(histogram: Mapping[str, int], q: float) -> float:
    """The q-quantile of a bucket's latencies, interpolated inside its histogram bin.

    Past the last bound there is nothing to interpolate to: the last bound is returned,
    which reads as "at least that long".
    """
    total = sum(histogram.get(latency_field(b), 0) for b in LATENCY_BOUNDS)
    total += histogram.get(OVERFLOW, 0)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    lower = 0.0
    for bound in LATENCY_BOUNDS:
        n = histogram.get(latency_field(bound), 0)
        if n and seen + n >= rank:
            return lower + (bound - lower) * (rank - seen) / n
        seen += n
        lower = bound
    return LATENCY_BOUNDS[-1]


def bucket(start: int, raw: Mapping[str, int]) -> Bucket:
    replies = raw.get(REPLIES, 0)
    return Bucket(
        start=start,
        counters={k: v for k, v in raw.items() if not _is_latency(k)},
        replies=replies,
        reply_mean_seconds=raw.get(REPLY_MS_SUM, 0) / 1000 / replies if replies else 0.0,
        reply_p50_seconds=quantile(raw, 0.5),
        reply_p95_seconds=quantile(raw, 0.95),
    )


def buckets(starts: Sequence[int], raws: Sequence[Mapping[str, int]]) -> list[Bucket]:
    return [bucket(s, r) for s, r in zip(starts, raws, strict=True)]


def window(starts: Sequence[int], raws: Sequence[Mapping[str, int]]) -> Bucket:
    """All the buckets as one: totals, and latency quantiles over the merged histograms."""
    merged: Counter[str] = Counter()
    for raw in raws:
        merged.update(raw)
    return bucket(starts[0] if starts else 0, merged)


@dataclass(frozen=True)
class Series:
    """The raw buckets of a span of time, oldest first, as read from Redis."""

    starts: Sequence[int]
    counts: Sequence[Mapping[str, int]]

    def last(self, hours: int) -> Series:
        """The most recent `hours` of it (the current bucket included)."""
        n = max(1, math.ceil(hours * 3600 / BUCKET_SECONDS))
        return Series(self.starts[-n:], self.counts[-n:])

    def buckets(self) -> list[Bucket]:
        return buckets(self.starts, self.counts)

    def window(self) -> Bucket:
        return window(self.starts, self.counts)
