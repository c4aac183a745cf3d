"""The bench stage: ``bench(artifact, BenchStageConfig(...), *, data=None, ctx=None) -> Artifact``.

It measures the artifact on each device profile with :func:`benchmarks.harness.measure` (the timing discipline
lives there) and, given data, its top-1 accuracy on the test split. The artifact comes back one ``bench`` record
further on; :func:`results_of` gives the typed :class:`~benchmarks.harness.BenchResult` of each device again.

Example::

    art = bench(load_model("model.onnx"), BenchStageConfig(devices=("x86-cpu",)), data=splits)
    [r.latency_ms.p90 for r in results_of(art)]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import BenchConfig, BenchResult, measure
from benchmarks.profiles import load_profile
from edgetl.artifact import Artifact, StageRecord
from edgetl.errors import ConfigError
from edgetl.multi_target import MultiTargetConfig
from edgetl.stages import StageContext

__all__ = ["BenchRecord", "BenchStageConfig", "bench", "results_of"]


@dataclass(frozen=True)
class BenchStageConfig(MultiTargetConfig):
    """The device profiles to measure on and how to measure (a :class:`BenchConfig`)."""

    TARGETS, OPTIONS = "devices", "bench"
    EMPTY = "bench needs at least one device profile, e.g. devices: [x86-cpu]"

    devices: tuple[str, ...] = ("x86-cpu",)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @classmethod
    def check_target(cls, name: str) -> None:
        load_profile(name)  # an unknown profile suggests the nearest


@dataclass(frozen=True)
class BenchRecord:
    """One measured artifact on one device, with its role in a run and its quality against the source model."""

    role: str
    device: str
    result: BenchResult
    agreement: float | None = None
    cost: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "device": self.device, "agreement": self.agreement, "cost": self.cost,
                "result": self.result.to_dict()}


def bench(artifact: Artifact, config: BenchStageConfig | None = None, *, data=None,
          ctx: StageContext | None = None) -> Artifact:
    """Measure ``artifact`` on each device of ``config`` (test accuracy too, given ``data``)."""
    config = config or BenchStageConfig()
    ctx = ctx or StageContext()
    accuracy = None
    with ctx.reporting():
        if data is not None:
            from edgetl.evaluate import evaluate

            accuracy = float(evaluate(artifact, data, split="test")["accuracy"])
        results = []
        for device in config.devices:
            r = measure(artifact, config.bench, profile=load_profile(device))
            if accuracy is not None:
                r = dataclasses.replace(r, accuracy=accuracy, accuracy_source=f"{data.name} test split")
            results.append(r)
    record = StageRecord("bench", config.to_dict(), {"results": [r.to_dict() for r in results]})
    return artifact.with_stage(record)


def results_of(artifact: Artifact) -> list[BenchResult]:
    """The typed results of the artifact's last ``bench`` record."""
    for rec in reversed(artifact.history):
        if rec.stage == "bench":
            return [BenchResult.from_dict(d) for d in rec.metrics.get("results", [])]
    raise ConfigError(f"{artifact.name} has no bench record; run the bench stage on it first")
