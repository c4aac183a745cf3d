"""What a measurement is asked (:class:`BenchConfig`) and what it returns (:class:`BenchResult`, the schema
stored, exported and sent over SSH), and the fields every measurement path fills the same way.

Example::

    r = BenchResult.from_dict(json.loads(text))
    r.headline_ms, r.latency_ms.count, r.env["cpu"]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.contract_inputs import input_shape
from benchmarks.inputs import InputSource
from benchmarks.stats import LatencyStats
from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError
from edgetl.formats import Precision, artifact_size

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.timing import WarmRunner

__all__ = ["SCHEMA_VERSION", "BenchConfig", "BenchResult", "result_fields"]

SCHEMA_VERSION = 1
# OpenVINO's inference precision hint names -> edgetl's precisions
_PRECISION_NAMES = {"f32": Precision.FP32, "bf16": Precision.BF16, "f16": Precision.FP16, "fp32": Precision.FP32,
                    "fp16": Precision.FP16}


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``None`` threads: the runtime's default (every core)."""

    batch: int = 1
    threads: int | None = None
    warmup_runs: int = 10
    warmup_s: float = 0.5
    min_time_s: float = 2.0
    min_count: int = 100
    max_time_s: float = 120.0
    runtime: str | None = None
    precision: str | None = None  # runtime-side precision hint (OpenVINO f32 / bf16 / f16); None: true fp32
    hint: str = "latency"  # OpenVINO performance hint: latency, throughput or none
    compile: bool = False  # torch.compile instead of eager
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers
    device: str = "cpu"
    inputs: InputSource = InputSource.AUTO
    distinct_inputs: int = 8  # cycled so caches see more than one image

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", InputSource.parse(self.inputs))
        object.__setattr__(self, "providers", tuple(self.providers))
        for name in ("batch", "min_count", "distinct_inputs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        for name in ("warmup_s", "min_time_s", "max_time_s"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {v}")
        if self.warmup_runs < 0:
            raise ConfigError(f"warmup_runs must not be negative, got {self.warmup_runs}")
        if self.max_time_s < self.min_time_s:
            raise ConfigError(f"max_time_s ({self.max_time_s}) must be at least min_time_s ({self.min_time_s})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = self.inputs.value
        d["providers"] = list(self.providers)
        return d


@dataclass
class BenchResult:
    """One measured artifact on one device. ``to_dict`` is the schema stored, exported and sent over SSH."""

    artifact: str
    format: str
    runtime: str
    precision: str
    batch: int
    threads: int | None
    latency_ms: LatencyStats
    throughput: float  # items per second over the timed loop
    device: str = "local"
    host: str = "local"
    path: str | None = None
    runtime_latency_ms: LatencyStats | None = None  # the runtime's own per-call time, where it reports one
    load_ms: float | None = None
    first_inference_ms: float | None = None
    cold_start_ms: float | None = None  # load + first inference
    peak_rss_delta_mb: float | None = None
    model_size_bytes: int | None = None
    accuracy: float | None = None
    accuracy_source: str | None = None
    inputs: str = ""
    tool: str = "edgetl"  # or "trtexec"
    runner: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    artifact_meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    arch: str = field(default_factory=platform.machine)  # the machine that measured (x86_64, aarch64, ...)
    emulated: str | None = None  # e.g. "emulated on x86-64": a profile measured on a machine it does not describe
    contended: bool = False  # other processes took CPU while this was timed (see benchmarks.contention)
    contention: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # interleaved rounds (benchmarks.interleave)
    speedup: dict[str, Any] | None = None  # against the baseline of the same rounds
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA_VERSION

    @property
    def headline_ms(self) -> float:
        """p90 of the per-call latency (MLPerf single-stream)."""
        return self.latency_ms.p90

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latency_ms"] = self.latency_ms.to_dict()
        d["runtime_latency_ms"] = self.runtime_latency_ms.to_dict() if self.runtime_latency_ms else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        if not isinstance(d, dict) or "latency_ms" not in d:
            raise ConfigError("not a benchmark result (no latency_ms)")
        if int(d.get("schema", 1)) > SCHEMA_VERSION:
            raise ConfigError(f"benchmark result schema {d.get('schema')} is newer than this edgetl "
                              f"({SCHEMA_VERSION}); upgrade edgetl")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["latency_ms"] = LatencyStats.from_dict(d["latency_ms"])
        if d.get("runtime_latency_ms"):
            kw["runtime_latency_ms"] = LatencyStats.from_dict(d["runtime_latency_ms"])
        return cls(**kw)


# --------------------------------------------------------------------------- what the artifact records
def _graph_precision(artifact: Artifact) -> str | None:
    """int8 / fp16 read from an ONNX or OpenVINO graph, or None."""
    if artifact.format in (Format.ONNX, Format.ORT) and artifact.path is not None and artifact.path.suffix == ".onnx":
        try:
            import onnx

            m = onnx.load(str(artifact.path), load_external_data=False)
            ops = {n.op_type for n in m.graph.node}
            if ops & {"QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}:
                return Precision.INT8.value
            if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
                return Precision.FP16.value
        except Exception:  # noqa: BLE001 - unknown graphs are reported as fp32
            pass
    if artifact.format is Format.OPENVINO and artifact.path is not None:
        try:
            head = artifact.path.read_text(errors="ignore")
            if 'type="FakeQuantize"' in head or 'element_type="i8"' in head or 'element_type="u8"' in head:
                return Precision.INT8.value
        except OSError:
            pass
    return None


def stored_precision(artifact: Artifact) -> str:
    """The precision the artifact's weights were made in, from its history or its graph."""
    for rec in reversed(artifact.history):
        p = rec.options.get("precision") or rec.metrics.get("precision")
        if p:
            return str(p)
        if rec.stage.startswith("quantize"):
            return Precision.INT8.value
    return _graph_precision(artifact) or Precision.FP32.value


def recorded_accuracy(artifact: Artifact) -> tuple[float | None, str | None]:
    """The last accuracy the artifact's history records, and where it came from (``stage.key``)."""
    for rec in reversed(artifact.history):
        for key in ("accuracy", "test_accuracy"):
            v = rec.metrics.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v), f"{rec.stage}.{key}"
    return None, None


def result_fields(warm: WarmRunner, info: dict[str, Any], config: BenchConfig, profile, *, name: str,
                  source_path: str | Path | None) -> dict[str, Any]:
    """The :class:`BenchResult` fields a single measurement and interleaved rounds fill alike: what ran
    (runtime, precision, threads), the cold start, size, recorded accuracy, inputs and the artifact's facts."""
    art, runtime = warm.artifact, warm.plan.runtime
    # What ran: int8 weights stay "int8"; otherwise the runtime-side precision where the runtime picks one
    # (OpenVINO's inference precision hint: f32, bf16 or f16), else the stored precision.
    stored = stored_precision(art)
    ran = _PRECISION_NAMES.get(str(info.get("precision")).lower()) if runtime == "openvino" else None
    acc, acc_src = recorded_accuracy(art)
    return dict(
        artifact=name, path=str(art.path or source_path or "") or None, format=art.format.value, runtime=runtime,
        precision=str(stored if stored == Precision.INT8.value or ran is None else ran), batch=config.batch,
        threads=config.threads if config.threads is not None else info.get("threads"),
        load_ms=warm.load_ms, first_inference_ms=warm.first_inference_ms, cold_start_ms=warm.cold_start_ms,
        model_size_bytes=artifact_size(art, Path(source_path) if source_path else None),
        accuracy=acc, accuracy_source=acc_src, inputs=warm.plan.origin,
        runner={**info, "outputs_finite": warm.finite, "warmup_calls": warm.warmup_calls},
        device=getattr(profile, "name", None) or "local",
        artifact_meta={"arch": art.arch, "stages": [r.stage for r in art.history],
                       "input_shape": input_shape(art)},
    )
