"""What every per-operator profiler returns (:class:`LayerProfile` of :class:`OpTime`), and what they share:
plain and profiled calls timed in interleaved rounds, and per-operator means over the quieter profiled runs.

Each runtime's profiler is one module beside this one, ``profile(artifact, x, threads, calls, rounds, warmup,
mapper) -> (ops, total_ms, plain_p50_ms, profiled_p50_ms, runtime_version)``; :mod:`benchmarks.profiler` picks it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgetl.errors import ModelError

__all__ = ["LayerProfile", "OpTime", "Profiled", "mean", "p50_ms", "per_run_ops", "time_interleaved"]


@dataclass
class OpTime:
    name: str  # the runtime's operator name
    op_type: str
    ms: float  # mean per inference over the profiled calls
    module: str | None = None  # PyTorch module it maps back to, if any


@dataclass
class LayerProfile:
    artifact: str
    format: str
    runtime: str
    runtime_version: str
    threads: int | None
    calls: int
    ops: list[OpTime]
    total_ms: float  # the profiler's own total per inference (mean over the profiled calls, as are the ops)
    plain_p50_ms: float  # wall-clock p50 without profiling, same call, interleaved
    profiled_p50_ms: float  # wall-clock p50 with profiling
    device: str = "local"
    host: str = "local"
    sum_tolerance: float = 0.35
    notes: list[str] = field(default_factory=list)

    @property
    def ops_sum_ms(self) -> float:
        return float(sum(o.ms for o in self.ops))

    @property
    def inflation(self) -> float:
        """Profiled p50 over plain p50: how much the profiler itself slows every call."""
        return self.profiled_p50_ms / self.plain_p50_ms if self.plain_p50_ms > 0 else float("nan")

    def by_module(self) -> list[tuple[str, float]]:
        """(module, ms) largest first; operators that map to no module are pooled under ``(unmapped)``."""
        acc: dict[str, float] = defaultdict(float)
        for o in self.ops:
            acc[o.module or "(unmapped)"] += o.ms
        return sorted(acc.items(), key=lambda kv: -kv[1])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ops_sum_ms=self.ops_sum_ms, inflation=self.inflation,
                 by_module=[{"module": m, "ms": ms} for m, ms in self.by_module()],
                 mapped_share=sum(o.ms for o in self.ops if o.module) / self.ops_sum_ms if self.ops_sum_ms else 0.0)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerProfile:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        kw["ops"] = [OpTime(**o) for o in d.get("ops", [])]
        return cls(**kw)


# (ops, profiled total ms, plain p50 ms, profiled p50 ms, runtime version): what each runtime's profiler returns
Profiled = tuple[list[OpTime], float, float, float, str]


def p50_ms(samples: list[int]) -> float:
    s = sorted(samples)
    return s[len(s) // 2] / 1e6


def time_interleaved(plain: Callable[[], Any], profiled: Callable[[], Any], *, calls: int, rounds: int,
                 warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        plain()
    a_s, b_s = [], []
    per = max(1, calls // rounds)
    for _ in range(rounds):
        for fn, out in ((plain, a_s), (profiled, b_s)):
            for _ in range(per):
                t = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - t)
    return p50_ms(a_s), p50_ms(b_s)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def per_run_ops(runs: list[dict[str, float]], totals: list[float], kinds: dict[str, str],
                 mapper_fn) -> tuple[list[OpTime], float]:
    """Each operator's mean time, and the mean total, over the quieter half of the profiled runs.

    Means, not medians: on a busy machine preemption lands on a different operator each run, so per-operator
    medians drop it and no longer add up to a run; means of the parts add up to the mean of the whole. The
    runs kept are those whose total is at most the median total (the same runs for parts and whole), so a
    call another process preempted does not spread its wait over the operators.
    """
    if len(totals) != len(runs) or not runs:
        raise ModelError(f"the profiler returned {len(runs)} runs and {len(totals)} totals")
    cut = sorted(totals)[(len(totals) - 1) // 2]
    keep = [i for i, t in enumerate(totals) if t <= cut]
    names = {k for i in keep for k in runs[i]}
    ops = [OpTime(k, kinds.get(k, ""), mean([runs[i].get(k, 0.0) for i in keep]), mapper_fn(k)) for k in names]
    return ops, mean([totals[i] for i in keep])
