"""Counters over time, for the operator's dashboard: fixed five-minute buckets in Redis.

Every counter the service keeps (messages in and out, takeovers, handoffs, dead
letters...) is also added to the bucket of the moment it happened, and every reply's
latency goes into that bucket's histogram. A bucket is one Redis hash that expires on
its own after a day, so the series costs a bounded amount of memory whatever the
traffic, and any replica can add to it.

Every latency figure (the day's median, a window's p50 and p95, each bucket's) comes
from these histograms, read at once: two figures over the same replies always agree, and
each is within RELATIVE_ERROR (2 %) of a reply time really measured.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BUCKET_SECONDS = 300
KEPT_SECONDS = 25 * 3600
MAX_HOURS = 24

# Reply latencies go into logarithmic bins, each GROWTH times as wide as the one before
# (a sketch with a relative error, as DDSketch does): bin i holds (GROWTH**(i-1),
# GROWTH**i] seconds and stands for the value in its middle, so every figure read from
# them is within RELATIVE_ERROR of a latency really measured, whatever its size (a reply
# of 3.77 s reads 3.7-3.85 s, never a bin's edge). A bucket holds only the bins it used.
GROWTH = 1.04
RELATIVE_ERROR = (GROWTH - 1) / (GROWTH + 1)  # under 2 %
_LOG_GROWTH = math.log(GROWTH)
LATENCY_PREFIX = "rt:"
SHORTEST_SECONDS = 0.001  # a reply faster than a millisecond is counted as 0
ZERO = LATENCY_PREFIX + "0s"
# The fixed bins of earlier versions (reply_le_<bound>): still in the buckets of the day
# before an upgrade; counted in the totals, not in the quantiles.
_OLD_LATENCY_PREFIX = "reply_le_"
REPLIES = "replies"
REPLY_MS_SUM = "reply_ms_sum"


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
    """The bin of one latency: `rt:<i>` for (GROWTH**(i-1), GROWTH**i] seconds."""
    if not seconds >= SHORTEST_SECONDS:  # NaN too
        return ZERO
    return f"{LATENCY_PREFIX}{math.ceil(math.log(seconds) / _LOG_GROWTH - 1e-9)}"


@functools.lru_cache(maxsize=4096)
def bin_value(field: str) -> float | None:
    """The latency a bin stands for (the middle of its range, in relative terms); None for
    a field that is not a bin. Kept: a report reads the same few hundred bins thousands
    of times."""
    if field == ZERO:
        return 0.0
    index = field.removeprefix(LATENCY_PREFIX)
    if index == field or not index.lstrip("-").isdigit():
        return None
    return 2 * GROWTH ** int(index) / (GROWTH + 1)


def _is_latency(name: str) -> bool:
    return name.startswith((LATENCY_PREFIX, _OLD_LATENCY_PREFIX)) or name in (
        REPLIES,
        REPLY_MS_SUM,
    )


@dataclass(frozen=True)
class Bucket:
    start: int
    counters: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    reply_mean_seconds: float = 0.0
    reply_p50_seconds: float = 0.0
    reply_p95_seconds: float = 0.0


def quantile(histogram: Mapping[str, int], q: float) -> float:
    """The q-quantile of the latencies binned in `histogram` (nearest rank: the value of
    the ceil(q·n)-th fastest reply), within RELATIVE_ERROR of that reply's latency."""
    bins = sorted(
        (value, count)
        for name, count in histogram.items()
        if count > 0 and (value := bin_value(name)) is not None
    )
    total = sum(count for _, count in bins)
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, count in bins:
        seen += count
        if seen >= rank:
            return value
    return bins[-1][0]


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
