"""The one place a runtime is opened for timing and a block of calls is timed (:func:`measure` and the
interleaved rounds both use it).

:func:`plan_run` picks the runtime and builds real inputs; :func:`open_warm` times the cold start (load + first
inference, the runtime library already imported), checks the batch against the runtime's declared
``fixed_batch`` and warms up for ``warmup_runs`` calls and ``warmup_s`` seconds; :func:`time_block` times each
call with ``perf_counter_ns`` around ``run`` + ``synchronize`` until both a count and a duration are reached,
with the runtime's own per-call latency where it declares ``own_clock``, and the block's CPU load
(:mod:`benchmarks.contention`).

Example::

    plan = plan_run(art, BenchConfig(threads=2), profile=None)
    warm = open_warm(art, plan, config)
    try:
        block = time_block(warm, count=100, min_ns=2_000_000_000, max_ns=10**11)
    finally:
        warm.close()
"""

from __future__ import annotations

import gc
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.contention import BlockLoad, between, snapshot
from benchmarks.contract_inputs import bench_inputs, feed_runner
from benchmarks.machine import peak_mb, reset_peak, rss_mb
from edgetl.artifact import Artifact
from edgetl.errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.schema import BenchConfig
    from edgetl.runtimes import Runtime, RuntimeOptions

__all__ = ["RunPlan", "TimedBlock", "WarmRunner", "open_warm", "plan_run", "time_block"]

# Python modules whose import the cold start should not include.
_RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
                    "executorch": "executorch.runtime", "litert": "ai_edge_litert", "tensorrt": "tensorrt"}
_REPORT_NS = 200_000_000  # progress between timed calls, at most five times a second


@dataclass(frozen=True)
class RunPlan:
    """What to open: the runtime, its options, and the real inputs (with where they came from)."""

    runtime: str
    options: RuntimeOptions
    inputs: list[np.ndarray]
    origin: str


def _preimport(runtime: str) -> None:
    mod = _RUNTIME_MODULES.get(runtime)
    if mod:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - the runtime raises the proper MissingDependencyError
            pass


def _runtime_extra(config: BenchConfig, runtime: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if runtime == "openvino":
        extra["batch"] = config.batch
        extra["hint"] = config.hint
    if runtime == "torch" and config.compile:
        extra["compile"] = True
    if runtime == "onnxruntime" and config.providers:
        extra["providers"] = list(config.providers)
    return extra


def plan_run(artifact: Artifact, config: BenchConfig, profile=None) -> RunPlan:
    """The runtime (the config's, else the profile's for this format, else the format's default), its options
    and the inputs; the runtime's library is imported now, so the cold start is the model's."""
    from edgetl.runtimes import RuntimeOptions, runner_for

    runtime = config.runtime or (profile.runtime_for(artifact.format) if profile is not None else None)
    runtime = runner_for(artifact.format, runtime)
    if config.compile and runtime != "torch":
        raise ConfigError(f"--compile is torch.compile; {artifact.name} runs in {runtime}")
    inputs, origin = bench_inputs(artifact, batch=config.batch, count=config.distinct_inputs, source=config.inputs)
    _preimport(runtime)
    options = RuntimeOptions(threads=config.threads, device=config.device, precision=config.precision,
                             extra=_runtime_extra(config, runtime))
    return RunPlan(runtime=runtime, options=options, inputs=inputs, origin=origin)


@dataclass
class WarmRunner:
    """An opened, warmed-up runtime with its cold-start figures."""

    artifact: Artifact
    runner: Runtime
    plan: RunPlan
    load_ms: float
    first_inference_ms: float
    cold_start_ms: float
    finite: bool  # the first outputs on real inputs were all finite
    warmup_calls: int
    rss0_mb: float | None = field(default=None, repr=False)
    peak_reset: bool = field(default=False, repr=False)

    def peak_rss_delta_mb(self) -> float | None:
        """The RSS high-water mark so far over the RSS before the load, where the kernel lets it be reset."""
        peak = peak_mb()
        if not self.peak_reset or peak is None or self.rss0_mb is None:
            return None
        return round(peak - self.rss0_mb, 2)

    def close(self) -> None:
        self.runner.close()


def _call(runner: Runtime, x: np.ndarray) -> Any:
    out = runner.run(x)
    runner.synchronize()
    return out


def _warm_up(runner: Runtime, inputs: list[np.ndarray], config: BenchConfig) -> int:
    """Caches, allocator pools, JIT and frequency ramp-up settle before anything counts."""
    i, start = 0, time.perf_counter()
    while i < config.warmup_runs or time.perf_counter() - start < config.warmup_s:
        _call(runner, inputs[i % len(inputs)])
        i += 1
        if time.perf_counter() - start > config.max_time_s:
            break
    return i


def open_warm(artifact: Artifact | None, plan: RunPlan, config: BenchConfig, *,
              reload: Callable[[], Artifact] | None = None) -> WarmRunner:
    """Open ``artifact`` (or what ``reload`` loads, inside the cold-start timing) in the plan's runtime, run it
    once, check its batch and outputs, and warm it up. The caller closes the result."""
    from edgetl.runtimes import open_runner

    gc.collect()
    peak_reset, rss0 = reset_peak(), rss_mb()
    t0 = time.perf_counter_ns()
    if reload is not None:
        artifact = reload()
    if artifact is None:
        raise ConfigError("nothing to measure: give an artifact or a reload function")
    runner = feed_runner(open_runner(artifact, runtime=plan.runtime, options=plan.options), artifact)
    try:
        t1 = time.perf_counter_ns()
        fixed = runner.fixed_batch
        if fixed and fixed != config.batch:
            raise ConfigError(f"{artifact.name} has a static batch of {fixed}; bench it with --batch {fixed}, or "
                              "export it with a dynamic batch")
        out = _call(runner, plan.inputs[0])
        t2 = time.perf_counter_ns()
        out = np.asarray(out)
        if out.shape[0] != config.batch:
            raise ModelError(f"{artifact.name} returned {out.shape[0]} rows for a batch of {config.batch}")
        calls = _warm_up(runner, plan.inputs, config)
    except BaseException:
        runner.close()
        raise
    return WarmRunner(artifact=artifact, runner=runner, plan=plan, load_ms=(t1 - t0) / 1e6,
                      first_inference_ms=(t2 - t1) / 1e6, cold_start_ms=(t2 - t0) / 1e6,
                      finite=bool(np.isfinite(out).all()), warmup_calls=calls, rss0_mb=rss0, peak_reset=peak_reset)


@dataclass
class TimedBlock:
    samples_ns: list[int]  # wall time of each call
    runtime_ms: list[float]  # the runtime's own latency of each call (own_clock runtimes), else empty
    load: BlockLoad  # CPU use of this process and of the others meanwhile


def time_block(warm: WarmRunner, *, count: int, min_ns: int, max_ns: int, warmup: int = 0,
               report: Callable[[list[int]], None] | None = None) -> TimedBlock:
    """Time calls until ``count`` calls and ``min_ns`` are done, or ``max_ns`` passes; ``warmup`` untimed calls
    first (caches after switching from another runtime). ``report(samples)`` is called between timed calls
    at most five times a second (progress)."""
    runner, inputs = warm.runner, warm.plan.inputs
    for k in range(warmup):
        _call(runner, inputs[k % len(inputs)])
    own_clock = runner.own_clock
    samples: list[int] = []
    rt: list[float] = []
    before = snapshot()
    start = time.perf_counter_ns()
    next_report = start + _REPORT_NS
    while True:
        x = inputs[len(samples) % len(inputs)]
        a = time.perf_counter_ns()
        runner.run(x)
        runner.synchronize()
        b = time.perf_counter_ns()
        samples.append(b - a)
        if own_clock:
            rt.append(runner.last_latency_ms)
        if report is not None and b >= next_report:
            report(samples)
            next_report = b + _REPORT_NS
        if (len(samples) >= count and b - start >= min_ns) or b - start >= max_ns:
            break
    return TimedBlock(samples_ns=samples, runtime_ms=rt, load=between(before, snapshot()))
