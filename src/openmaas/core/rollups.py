"""Daily roll-ups of usage: what one organization × UTC day × model × key adds up to, and
the fixed histogram that keeps latencies readable as percentiles.

A roll-up keeps counts and sums (exact integers, money in micros as the usage records hold
it) and, for latency and time to first token, a count per bucket of a fixed log-scale
histogram: bucket ``i`` holds the values below ``BOUNDS_MS[i]`` and at or above the bound
before it (the last one everything at or above ``BOUNDS_MS[-1]``). Bounds grow by a factor
of 2^(1/4) (about 19%), so a percentile read as its bucket's upper bound is at most 19% above
the true value (exact below 8 ms, where the bounds are 1 ms apart).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from openmaas.core.termination import Termination


def _bounds() -> tuple[int, ...]:
    bounds: list[int] = []
    for step in range(4 * 23):  # up to 2^23 ms (2.3 hours)
        bound = math.ceil(2 ** (step / 4))
        if not bounds or bound > bounds[-1]:
            bounds.append(bound)
    return tuple(bounds)


BOUNDS_MS = _bounds()
"""Upper bounds (exclusive) of the buckets, in milliseconds; one more bucket holds the rest."""

ERROR_TERMINATIONS = frozenset(
    {
        Termination.ENGINE_ERROR,
        Termination.REJECTED,
        Termination.TIMEOUT,
        Termination.GATEWAY_SHUTDOWN,
        Termination.GATEWAY_KILLED,
    }
)
"""How a request ends when it counts as an error: the platform or the engine failed it, or
refused its input. A finished or cut request (length), one the client left, and one whose
key was revoked are not errors."""

LATENCY = "latency"
TTFT = "ttft"


def bucket_of(ms: int) -> int:
    """The bucket of a duration in milliseconds."""
    return bisect_right(BOUNDS_MS, max(ms, 0))


def bucket_bound(bucket: int) -> int | None:
    """What a percentile that falls in ``bucket`` reads as: its upper bound (None: the last,
    open bucket, read as its lower bound by :func:`percentile`)."""
    return BOUNDS_MS[bucket] if bucket < len(BOUNDS_MS) else None


def percentile(counts: Mapping[int, int], fraction: float) -> int | None:
    """The ``fraction`` (0.5: p50) percentile of a histogram ``{bucket: count}`` in ms, read
    as the upper bound of the bucket that holds it; None when it counts nothing."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            bound = bucket_bound(bucket)
            return BOUNDS_MS[-1] if bound is None else bound
    return BOUNDS_MS[-1]  # unreachable: the counts add up to the total


def is_error(termination: str) -> bool:
    return termination in ERROR_TERMINATIONS


@dataclass
class Rollup:
    """The sums of one organization × day × model × key (or of any set of such rows)."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micros: int = 0
    currency: str | None = None  # of the priced requests among them; None: none priced
    latency: dict[int, int] = field(default_factory=dict)  # bucket -> requests
    ttft: dict[int, int] = field(default_factory=dict)  # bucket -> requests with a first token

    def add_request(
        self,
        *,
        termination: str,
        input_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        reasoning_tokens: int,
        cost_micros: int | None,
        currency: str | None,
        latency_ms: int,
        ttft_ms: int | None,
    ) -> None:
        """Fold one usage record in."""
        self.requests += 1
        self.errors += int(is_error(termination))
        self.input_tokens += input_tokens
        self.cached_tokens += cached_tokens
        self.output_tokens += output_tokens
        self.reasoning_tokens += reasoning_tokens
        if cost_micros is not None:
            self.cost_micros += cost_micros
            self.currency = self.currency or currency
        _count(self.latency, bucket_of(latency_ms))
        if ttft_ms is not None:
            _count(self.ttft, bucket_of(ttft_ms))

    def add(self, other: Rollup) -> None:
        """Fold another roll-up in (rows of several keys, models or days)."""
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_micros += other.cost_micros
        self.currency = self.currency or other.currency
        for bucket, n in other.latency.items():
            _count(self.latency, bucket, n)
        for bucket, n in other.ttft.items():
            _count(self.ttft, bucket, n)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def latency_ms(self, fraction: float) -> int | None:
        return percentile(self.latency, fraction)

    def ttft_ms(self, fraction: float) -> int | None:
        return percentile(self.ttft, fraction)


def _count(histogram: dict[int, int], bucket: int, n: int = 1) -> None:
    histogram[bucket] = histogram.get(bucket, 0) + n


def total(rollups: Iterable[Rollup]) -> Rollup:
    summed = Rollup()
    for rollup in rollups:
        summed.add(rollup)
    return summed
