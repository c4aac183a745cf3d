"""The distillation stage's options: :class:`DistillConfig` and its closed choices (cheap to import: no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.choice import Choice
from edgetl.errors import ConfigError
from edgetl.stages import option

__all__ = ["DistillConfig", "Optimizer", "Views", "resume_path"]


class Optimizer(Choice):
    ADAMW = "adamw"
    SGD = "sgd"  # plain when momentum == 0 (what the multi-process equality test uses)


class Views(Choice):
    """Which views of each training image a step sees."""

    ORIGINAL = "original"
    AUGMENTED = "augmented"  # randomly shifted
    BOTH = "both"  # original and shifted: twice the samples per step

    @classmethod
    def _kind(cls) -> str:
        return "views"


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run needs besides the models and data.

    ``epochs`` is the main phase; each entry of ``unfreeze`` (fractions of the trunk's parameters, from the
    output side, 0 meaning the head alone) adds ``unfreeze_epochs`` more. ``checkpoint``/``resume`` make
    the run resumable (see :mod:`edgetl.distill.distiller`); ``history_path`` receives the epoch history as JSON.
    ``student`` names a student to build (a zoo name or a model file); left out, the stage's input model is the
    student.
    """

    student: str | None = option(None, help="The student: a zoo name (edgetl_tinycnn, mobilenet_v3_small, "
                                 "resnet18 ...) or a model file; None: the stage's input model.", cli=False)
    epochs: int = option(10, help="Epochs of the main phase.")
    temperature: float = option(4.0, help="Softening temperature of the teacher's outputs (> 0).")
    alpha: float = option(0.9, help="Weight of the soft-target loss (0..1); 1 - alpha goes to the labels.")
    feature_pairs: tuple[tuple[str, str], ...] = option((), help="Hint losses between layers: s_layer:t_layer,... "
                                                         "(1x1 adapters where widths differ).")
    feature_weight: float = option(1.0, help="Weight of the feature-hint loss.")
    teacher_weights: tuple[float, ...] | None = option(None, help="Comma-separated weight per teacher (default: "
                                                       "from each teacher's agreement with the labels).")
    optimizer: Optimizer = option(Optimizer.ADAMW, help="Optimizer.")
    lr: float = option(3e-3, help="Peak learning rate (cosine schedule).")
    weight_decay: float = option(1e-4, help="Weight decay.")
    momentum: float = option(0.9, help="SGD momentum (0: plain SGD).")
    batch_size: int = option(64, help="Global batch size (split across torchrun ranks).")
    views: Views = option(Views.BOTH, help="Views of each image per step (augmented: randomly shifted).")
    shift: float = option(0.1, help="Largest random translation, as a fraction of the image side.")
    unfreeze: tuple[float, ...] = option((), help="Progressive unfreezing phases after the main epochs: trunk "
                                         "fractions, e.g. 0,0.5,1.")
    unfreeze_epochs: int = option(1, help="Epochs per unfreezing phase.")
    patience: int | None = option(None, help="Stop after this many epochs without a better validation accuracy.")
    stable_forward: bool = option(False, help="Train with normalisation layers in eval mode (keeps their "
                                  "statistics).")
    pretrained: bool = option(True, help="Zoo students start from offline pretrained weights where they exist.")
    seed: int = option(0, help="Seed of the data split and of training.")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N (auto: the local CUDA device when there is one).",
                         recipe=False)
    checkpoint: Path | None = option(None, help="Resumable training state, written after every epoch.",
                                     recipe=False, cli=False)
    resume: bool = option(False, help="Continue from checkpoint.", recipe=False, cli=False)
    history_path: Path | None = option(None, help="Where the epoch history goes as JSON.", recipe=False, cli=False)

    def __post_init__(self) -> None:
        from edgetl.distill.losses import parse_feature_pairs

        set_ = object.__setattr__
        set_(self, "optimizer", Optimizer.parse(self.optimizer))
        set_(self, "views", Views.parse(self.views))
        if self.student is not None and (not isinstance(self.student, (str, Path)) or not str(self.student).strip()):
            raise ConfigError(f"student must be a zoo name or a model file, got {self.student!r}; to distil into "
                              "a model you hold, pass it as the stage's artifact")
        if self.student is not None:
            set_(self, "student", str(self.student))
        set_(self, "feature_pairs", parse_feature_pairs(self.feature_pairs))
        if self.teacher_weights is not None:
            set_(self, "teacher_weights", tuple(float(w) for w in self.teacher_weights))
        set_(self, "unfreeze", tuple(float(f) for f in self.unfreeze))
        for name in ("checkpoint", "history_path"):
            v = getattr(self, name)
            if v is not None:
                set_(self, name, Path(v))
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; typical values are 2..8")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha (weight of the soft-target loss) must lie in 0..1, got {self.alpha}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.unfreeze and self.unfreeze_epochs < 1:
            raise ConfigError("unfreeze_epochs must be >= 1")
        if any(not 0.0 <= f <= 1.0 for f in self.unfreeze) or list(self.unfreeze) != sorted(self.unfreeze):
            raise ConfigError(f"unfreeze fractions must increase within 0..1, got {self.unfreeze}")
        if not self.lr > 0 or self.batch_size < 1 or self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("lr must be > 0, batch_size >= 1, weight_decay and momentum >= 0")
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight must be >= 0, got {self.feature_weight}")
        if not 0.0 <= self.shift < 0.5:
            raise ConfigError(f"shift must lie in 0..0.5 (a fraction of the image side), got {self.shift}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 epoch, got {self.patience}")
        if self.resume and self.checkpoint is None:
            raise ConfigError("resume needs a checkpoint path to resume from")

    @property
    def total_epochs(self) -> int:
        return self.epochs + len(self.unfreeze) * self.unfreeze_epochs

    def phase(self, epoch: int) -> float | None:
        """The trunk fraction trained in ``epoch`` (1-based), or None for the main phase (everything)."""
        if epoch <= self.epochs:
            return None
        return self.unfreeze[(epoch - self.epochs - 1) // self.unfreeze_epochs]

    def options(self) -> dict[str, Any]:
        """The JSON-safe options recorded in the artifact's history."""
        d = dataclasses.asdict(self)
        d["optimizer"], d["views"] = self.optimizer.value, self.views.value
        d["feature_pairs"] = [f"{s}:{t}" for s, t in self.feature_pairs]
        for k in ("checkpoint", "history_path"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d

    def training_options(self) -> dict[str, Any]:
        """The options that change the result (what a resumed run must share with the interrupted one)."""
        d = self.options()
        for k in ("device", "checkpoint", "resume", "history_path"):
            d.pop(k)
        return d


def resume_path(output: str | Path) -> Path:
    """Where the resumable state of a run writing ``output`` lives: ``OUTPUT.resume``."""
    output = Path(output)
    return output.with_name(output.name + ".resume")
