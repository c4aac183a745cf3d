"""Latency targets measured on this machine: the harness and the per-layer latency table, injected into
:class:`edgetl.prune.latency_target.LatencyTarget`.

Used by ``edgetl prune --target-latency-ms`` (:mod:`edgetl.cli.latency_target`, which adds boards over SSH) and
by a recipe's prune stage with ``target_latency_ms`` (the pipeline). ``T`` is the p50 at batch 1 on the runtime:
an fp32 target measures the model exported to ONNX (``onnxruntime``/``openvino``) or eager (``torch``); an int8
target quantizes it first by edgetl's own int8 path for the runtime (NNCF for OpenVINO, U8S8 QDQ for ONNX
Runtime), calibrated on the data.

Example::

    m = LocalLatency.from_options(device="x86-cpu", runtime="onnxruntime", threads=2, quick=True)
    target = m.target(4.0)
    pruned, report = target.prune(artifact, PruneConfig(criterion="lrp"), splits)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError
from edgetl.prune.latency_target import LatencyOptions, LatencyTarget

__all__ = ["LocalLatency", "choose_runtime", "recipe_target"]


def choose_runtime(profile, runtime: str | None, *, flag: str = "--runtime") -> str:
    """``runtime``, checked, or the profile's first runtime the latency table measures on (torch last)."""
    from benchmarks.latency_table import RUNTIMES

    if runtime is None:
        usable = [r for r in profile.runtimes if r in RUNTIMES]
        runtime = next((r for r in usable if r != "torch"), usable[0] if usable else None)
        if runtime is None:
            raise ConfigError(f"device profile {profile.name!r} has none of the runtimes the latency table "
                              f"measures on ({', '.join(RUNTIMES)}); set {flag}")
    elif runtime not in RUNTIMES:
        raise ConfigError(f"the latency table measures on {', '.join(RUNTIMES)}; got {flag} {runtime!r}")
    return runtime


@dataclass(frozen=True)
class LocalLatency:
    """How a latency target is measured here: device profile, runtime, threads, precision, timing."""

    profile: Any  # benchmarks.profiles.DeviceProfile
    runtime: str
    threads: int | None
    precision: str = "fp32"
    quick: bool = False
    cache_dir: Path | None = None

    @classmethod
    def from_options(cls, *, device: str, runtime: str | None, threads: int | None, precision: str = "fp32",
                     quick: bool = False, cache_dir: Path | None = None, flag: str = "--runtime") -> LocalLatency:
        from benchmarks.profiles import load_profile

        profile = load_profile(device)
        runtime = choose_runtime(profile, runtime, flag=flag)
        if precision == "int8" and runtime == "torch":
            raise ConfigError(f"an int8 latency target runs on openvino or onnxruntime; set {flag}")
        return cls(profile=profile, runtime=runtime, threads=threads if threads is not None else profile.threads,
                   precision=precision, quick=quick, cache_dir=cache_dir)

    def bench_config(self):
        from benchmarks.harness import BenchConfig

        b = self.profile.bench
        if self.quick:
            return BenchConfig(threads=self.threads, runtime=self.runtime, warmup_runs=3, warmup_s=0.1,
                               min_time_s=0.3, min_count=30, max_time_s=10.0)
        return BenchConfig(threads=self.threads, runtime=self.runtime, warmup_runs=b.warmup_runs,
                           warmup_s=b.warmup_s, min_time_s=b.min_time_s, min_count=b.min_count,
                           max_time_s=b.max_time_s)

    def int8(self, art: Artifact, splits, folder: Path) -> Artifact:
        """The int8 model the target is about, quantized by edgetl's path for the runtime."""
        from edgetl.quantize import QuantizeConfig, quantize
        from edgetl.stages import StageContext

        suffix = ".xml" if self.runtime == "openvino" else ".onnx"
        return quantize(art, QuantizeConfig(backend=self.runtime, precision="int8",
                                            calib_samples=64 if self.quick else 300, allow_drop=True),
                        data=splits, ctx=StageContext(output=folder / f"model.int8{suffix}"))

    def p50(self, art: Artifact, splits=None) -> float:
        """p50 (ms, batch 1, wall clock) of a PyTorch artifact on the target runtime, through the harness."""
        import torch

        from benchmarks.harness import measure

        config = self.bench_config()
        if self.runtime == "torch":
            return measure(art, config, profile=self.profile).latency_ms.p50
        with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
            if self.precision == "int8":
                return measure(self.int8(art, splits, Path(tmp)), config, profile=self.profile).latency_ms.p50
            f = Path(tmp) / "pruned.onnx"
            x = torch.zeros(art.input_spec.batch_shape(1))
            torch.onnx.export(art.model.eval(), (x,), str(f), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17)
            onnx_art = Artifact(format=Format.ONNX, path=f, input_spec=art.input_spec, labels=art.labels,
                                arch=art.arch, history=list(art.history), extra=dict(art.extra))
            return measure(onnx_art, config, profile=self.profile).latency_ms.p50

    def table(self, art: Artifact, unpruned_ms: float):
        """The per-layer latency table of ``art`` on this runtime (cached per device, runtime, threads, shape)."""
        from benchmarks.latency_table import TimingConfig, build_latency_table

        timing = TimingConfig(calls=3, rounds=1, warmup=1) if self.quick else TimingConfig()
        return build_latency_table(art.model, art.input_spec.shape, runtime=self.runtime, threads=self.threads,
                                   device=self.profile.name, cache_dir=self.cache_dir, timing=timing,
                                   max_points=6 if self.quick else 12, precision=self.precision,
                                   base_ms=unpruned_ms if self.precision == "int8" else None)

    def info(self, host: str = "local") -> dict[str, Any]:
        return {"device": self.profile.name, "runtime": self.runtime, "precision": self.precision, "host": host,
                "threads": self.threads}

    def target(self, target_ms: float, *, splits=None, max_iterations: int = 4) -> LatencyTarget:
        """The latency target measured here (``splits`` calibrate an int8 target)."""
        from benchmarks.latency_table import table_summary

        return LatencyTarget(target_ms=float(target_ms), measure=lambda a: self.p50(a, splits),
                             latency_model=self.table, info=self.info(), max_iterations=max_iterations,
                             describe=table_summary)


def recipe_target(options: LatencyOptions, *, splits) -> LatencyTarget:
    """The latency target of a recipe's prune stage (``target_latency_ms``, ``device``, ``runtime``, ...)."""
    local = LocalLatency.from_options(device=options.device, runtime=options.runtime, threads=options.threads,
                                      precision=options.latency_precision, quick=options.quick_latency,
                                      cache_dir=options.cache_dir, flag="prune runtime")
    return local.target(options.target_latency_ms, splits=splits, max_iterations=options.max_iterations)
