"""Latency statistics: percentiles with linear interpolation, mean, sample std, min/max and count.

The headline of a single-stream benchmark is p90 (MLPerf SingleStream); p50/p99/mean/std/min/max and the
sample count travel with it, so a reader can judge the spread.

Example::

    s = LatencyStats.from_samples([2.1, 2.0, 2.4, 2.2])
    s.p50, s.p90, s.count       # 2.15, 2.34, 4
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgetl.errors import ConfigError

__all__ = ["LatencyStats", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated between ranks.

    This is the "linear" method (numpy's default, Hyndman & Fan type 7): rank ``(n - 1) * q / 100``.

    Example::

        percentile([1, 2, 3, 4], 50)    # 2.5
    """
    if not sorted_values:
        raise ConfigError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"percentile must lie in 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds."""

    count: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single sample
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float]) -> LatencyStats:
        xs = sorted(float(x) for x in samples_ms)
        if not xs:
            raise ConfigError("no latency samples to summarise")
        if any(not math.isfinite(x) or x < 0 for x in xs):
            raise ConfigError("latency samples must be finite and non-negative")
        n = len(xs)
        mean = math.fsum(xs) / n
        var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
        return cls(count=n, mean=mean, std=math.sqrt(var), min=xs[0], max=xs[-1],
                   p50=percentile(xs, 50), p90=percentile(xs, 90), p95=percentile(xs, 95), p99=percentile(xs, 99))

    @classmethod
    def from_ns(cls, samples_ns: Iterable[int]) -> LatencyStats:
        """From ``perf_counter_ns`` differences."""
        return cls.from_samples(x / 1e6 for x in samples_ns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        return cls(**{k: (int(d[k]) if k == "count" else float(d[k])) for k in cls.__dataclass_fields__})
