"""A latency histogram cheap enough to update once per delivered frame, and its percentiles.

Buckets are 10 microseconds wide up to 10 ms, then 1 ms wide up to ``MAX_MS``; anything slower
lands in the last bucket. Client processes ship their counts as sparse ``{bucket: count}`` dicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

FINE_NS = 10_000
"""Width of the fine buckets (10 us)."""
FINE_BUCKETS = 1000
"""Fine buckets cover 0-10 ms."""
COARSE_NS = 1_000_000
"""Width of the coarse buckets (1 ms)."""
MAX_MS = 120_000
SIZE = FINE_BUCKETS + MAX_MS
LAST = SIZE - 1
FINE_LIMIT_NS = FINE_NS * FINE_BUCKETS


def bucket(latency_ns: int) -> int:
    """The bucket of one latency (the client inlines the same arithmetic in its hot path)."""
    if latency_ns < FINE_LIMIT_NS:
        return max(0, latency_ns // FINE_NS)
    return min(FINE_BUCKETS + latency_ns // COARSE_NS, LAST)


def bucket_ms(index: int) -> float:
    """The middle of a bucket, in milliseconds."""
    if index < FINE_BUCKETS:
        return (index * FINE_NS + FINE_NS / 2) / 1e6
    return (index - FINE_BUCKETS) + 0.5


def sparse(counts: list[int]) -> dict[int, int]:
    """The non-empty buckets of a dense histogram."""
    return {index: count for index, count in enumerate(counts) if count}


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add sparse histograms together."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            total[index] = total.get(index, 0) + count
    return total


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The latency (ms) below which ``fraction`` of the samples fall; None without samples."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_ms(index)
    return bucket_ms(max(histogram))


def count(histogram: Mapping[int, int]) -> int:
    """How many samples the histogram holds."""
    return sum(histogram.values())


def nearest_rank(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` of 1) of ``values`` themselves; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
