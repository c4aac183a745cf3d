"""The one value that flows through every stage: an :class:`Artifact`.

An artifact is a model in some format (an in-memory PyTorch module or a file), the input it expects
(:class:`InputSpec`), its class labels and the history of stages that made it, each with its metrics.
Each stage is ``stage(artifact, config, *, data=None) -> Artifact`` and appends one :class:`StageRecord`.

Example::

    art = edgetl.load_model("teacher.pt")
    art.input_spec.batch_shape(1)      # (1, 3, 64, 64)
    art.history[-1].metrics["accuracy"]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.choice import Choice
from edgetl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from edgetl.contract import ModelContract

__all__ = ["Artifact", "Format", "InputSpec", "StageRecord", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Format(Choice):
    """Where an artifact's model lives and which runtime runs it."""

    TORCH = "torch"  # an nn.Module in memory, saved as edgetl's own safe checkpoint
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "pt2"
    ONNX = "onnx"
    OPENVINO = "openvino"
    ORT = "ort"
    EXECUTORCH = "executorch"
    TFLITE = "tflite"
    TENSORRT = "tensorrt"  # a serialized engine
    TENSORRT_BUNDLE = "tensorrt-bundle"  # ONNX + build.sh for trtexec on the device

    @classmethod
    def _kind(cls) -> str:
        return "format"


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: a float32 NCHW batch of ``shape`` (C, H, W), normalised by mean/std.

    ``source_channels`` is what the raw data has (1 for MNIST); preprocessing converts it to ``shape[0]``.
    Export, quantization calibration and benchmarks all build their inputs from this one record.
    """

    shape: tuple[int, int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source_channels: int | None = None
    resize: str = "bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"input shape must be (channels, height, width) with positive sizes, got {self.shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise ConfigError(
                f"mean/std need one value per channel ({shape[0]}), got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def batch_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (int(batch), *self.shape)

    def with_resolution(self, height: int, width: int | None = None) -> InputSpec:
        return dataclasses.replace(self, shape=(self.shape[0], int(height), int(width or height)))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"input spec has unknown keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """One stage that touched the artifact: what ran, with which options, and what it measured."""

    stage: str
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: str = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        return cls(**{k: d[k] for k in ("stage", "options", "metrics", "seconds", "finished") if k in d})


@dataclass
class Artifact:
    """A model plus everything needed to run, export and compare it.

    ``model`` holds the module for in-memory PyTorch formats, ``path`` the file (or directory) for the others.
    ``arch`` is the zoo architecture it derives from, when known; it lets a pruned model reload without pickle.
    ``contract`` names every input and output (:class:`~edgetl.contract.ModelContract`); a model that is not a
    single-input image classifier has a contract and no ``input_spec`` (None).
    """

    format: Format
    input_spec: InputSpec | None
    labels: tuple[str, ...]
    model: torch.nn.Module | None = None
    path: Path | None = None
    arch: str | None = None
    history: list[StageRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    contract: ModelContract | None = None

    def __post_init__(self) -> None:
        self.format = Format.parse(self.format)
        if self.input_spec is None and self.contract is None:
            raise ConfigError("an artifact needs an input spec or a model contract (--input NAME:SHAPE)")
        self.labels = tuple(str(x) for x in self.labels)
        if self.path is not None:
            self.path = Path(self.path)
        if self.model is None and self.path is None:
            raise ConfigError("an artifact needs a model or a path")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path.name
        return f"{self.arch or type(self.model).__name__}"

    def with_stage(
        self,
        record: StageRecord,
        *,
        model: torch.nn.Module | None = None,
        path: Path | None = None,
        format: Format | str | None = None,
        input_spec: InputSpec | None = None,
        extra: dict[str, Any] | None = None,
        contract: ModelContract | None = None,
    ) -> Artifact:
        """A new artifact one stage further on; the history is copied, never shared."""
        fmt = Format.parse(format) if format is not None else self.format
        new_model = model if model is not None else (self.model if path is None else None)
        return Artifact(
            format=fmt,
            input_spec=input_spec or self.input_spec,
            labels=self.labels,
            model=new_model,
            path=path if path is not None else (self.path if model is None else None),
            arch=self.arch,
            history=[*self.history, record],
            extra={**self.extra, **(extra or {})},
            contract=contract if contract is not None else self.contract,
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-safe description embedded in exported files and results."""
        return {
            "format": self.format.value,
            "arch": self.arch,
            "labels": list(self.labels),
            "input_spec": self.input_spec.to_dict() if self.input_spec is not None else None,
            "history": [r.to_dict() for r in self.history],
            **({"contract": self.contract.to_dict()} if self.contract is not None else {}),
        }

    def last_metric(self, key: str, default: Any = None) -> Any:
        for rec in reversed(self.history):
            if key in rec.metrics:
                return rec.metrics[key]
        return default
