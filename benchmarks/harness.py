"""Latency measurement a careful engineer would sign: single-stream, warm-up, minimum time AND count.

One measurement (:func:`measure`) of one artifact:

1. builds real inputs from the artifact's input spec: images of the dataset the model was trained on when the
   artifact records it, else real photos (``skimage.data``), else the scans of sklearn's digits; never noise
   (:mod:`benchmarks.inputs`);
2. imports the runtime first, so the cold start is the model's (load + first inference), not the library's;
3. warms up for ``warmup_runs`` calls and at least ``warmup_s`` seconds;
4. times each call with ``perf_counter_ns`` around ``run`` + the runtime's ``synchronize``, until both
   ``min_count`` calls and ``min_time_s`` seconds are done (or ``max_time_s`` passes) (:mod:`benchmarks.timing`,
   shared with the interleaved rounds of :mod:`benchmarks.interleave`);
5. reports p90 (the MLPerf single-stream headline) with p50/p95/p99/mean/std/min/max and the count, the
   runtime's own per-call latency where it keeps one (``Runtime.own_clock``: OpenVINO), peak memory (RSS
   high-water mark over the pre-load RSS), model size on disk, and the environment (CPU, cores, library
   versions, power mode; :mod:`benchmarks.machine`), in a :class:`~benchmarks.schema.BenchResult`.

Example::

    r = measure(load_model("model.xml"), BenchConfig(threads=2))
    r.latency_ms.p90, r.latency_ms.count, r.env["cpu"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.contention import ContentionRule
from benchmarks.inputs import InputSource, real_inputs
from benchmarks.machine import environment
from benchmarks.schema import SCHEMA_VERSION, BenchConfig, BenchResult, result_fields
from benchmarks.stats import LatencyStats
from benchmarks.timing import open_warm, plan_run, time_block
from edgetl.artifact import Artifact
from edgetl.formats import artifact_size as model_size
from edgetl.progress import task

__all__ = ["SCHEMA_VERSION", "BenchConfig", "BenchResult", "InputSource", "environment", "measure", "model_size",
           "real_inputs"]


class _Progress:
    """Advances a progress bar up to ``total`` calls, with the running p50, as the timed loop reports."""

    def __init__(self, bar, total: int) -> None:
        self.bar, self.total, self.reported = bar, total, 0

    def __call__(self, samples: list[int]) -> None:
        s = sorted(samples)
        done = min(len(samples), self.total)
        self.bar.advance(done - self.reported, p50_ms=s[len(s) // 2] / 1e6, calls=len(samples))
        self.reported = done

    def finish(self) -> None:
        self.bar.advance(self.total - self.reported)


def measure(artifact: Artifact, config: BenchConfig | None = None, *, profile=None,
            source_path: str | Path | None = None, reload: Callable[[], Artifact] | None = None) -> BenchResult:
    """Measure ``artifact`` single-stream; see the module docstring for the procedure.

    ``reload`` loads the artifact again from its file inside the cold-start timing (PyTorch checkpoints,
    whose load is the file read; exported formats are loaded by their runner anyway).
    """
    config = config or BenchConfig()
    plan = plan_run(artifact, config, profile)
    if reload is not None:
        artifact = None  # type: ignore[assignment] - dropped so the reload's memory is counted
    warm = open_warm(artifact, plan, config, reload=reload)
    try:
        with task(f"bench {warm.artifact.name} [{plan.runtime}]", total=config.min_count) as bar:
            progress = _Progress(bar, config.min_count)
            block = time_block(warm, count=config.min_count, min_ns=int(config.min_time_s * 1e9),
                               max_ns=int(config.max_time_s * 1e9), report=progress)
            progress.finish()
        peak_delta = warm.peak_rss_delta_mb()
        info = warm.runner.describe()
    finally:
        warm.close()

    samples, rt, load = block.samples_ns, block.runtime_ms, block.load
    limit = ContentionRule().others_cores
    background = load.others_cores
    contended = background is not None and background > limit
    warnings: list[str] = []
    if contended:
        warnings.append(f"other processes used {background:.1f} cores while this was timed: the latency is "
                        "inflated (thread pools that wait on busy cores, e.g. PyTorch eager with several threads, "
                        "suffer most); measure on an idle machine")
    if len(samples) < config.min_count:
        warnings.append(f"only {len(samples)} calls within max_time_s={config.max_time_s} (asked for {config.min_count})")
    if not warm.finite:
        warnings.append("the model produced non-finite outputs on real inputs")
    art = warm.artifact
    name = Path(source_path).name if source_path and art.path is None else art.name
    return BenchResult(
        **result_fields(warm, info, config, profile, name=name, source_path=source_path),
        latency_ms=LatencyStats.from_ns(samples),
        runtime_latency_ms=LatencyStats.from_samples(rt) if rt else None,
        throughput=config.batch * len(samples) / load.wall_s, peak_rss_delta_mb=peak_delta,
        config=config.to_dict(), env={**environment(profile), "background_load_cores": background},
        warnings=warnings, contended=contended, contention={"others_cores_max": background,
                                                            "rule": {"others_cores": limit}},
    )
