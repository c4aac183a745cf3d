"""The pruning stage's options: :class:`PruneConfig`, the scope and recovery choices, and layer filters.

Cheap to import (no torch, no torch-pruning): the CLI reads the config's fields to build its flags. The criteria
and composites are looked up when a config is made.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgetl.choice import Choice
from edgetl.errors import ConfigError
from edgetl.stages import option

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.artifact import Artifact
    from edgetl.data import DataSplits
    from edgetl.prune.criteria import Normalization
    from edgetl.prune.relevance import Composite

__all__ = ["LayerFilter", "PruneConfig", "Recover", "Recovery", "Scope", "layers_matching"]

#: Layer selection, shared by every stage: ``(qualified name, module) -> bool``.
LayerFilter = Callable[[str, Any], bool]
#: Recovery after a pruning step: gets the pruned artifact and the data, returns the recovered artifact.
Recover = Callable[["Artifact", "DataSplits"], "Artifact"]


class Scope(Choice):
    """Where channels compete: across all layers (global) or within each layer (layerwise)."""

    GLOBAL = "global"
    LAYERWISE = "layerwise"


class Recovery(Choice):
    """How accuracy is won back after a pruning step."""

    FINETUNE = "finetune"  # plain training on the labels
    DISTILL = "distill"  # distillation from the unpruned model

    @classmethod
    def _kind(cls) -> str:
        return "recovery"


def layers_matching(*patterns: str) -> LayerFilter:
    """A layer filter selecting modules whose qualified name matches any shell-style pattern (``features.1*``)."""
    import fnmatch

    def match(name: str, module: Any) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    match.__qualname__ = f"layers_matching{patterns!r}"
    return match


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how far.

    Give one target: ``ratio`` (share of prunable channels removed), ``target_flops`` or ``target_params``
    (fraction of the original cost to *keep*; the ratio is searched). ``steps`` > 1 prunes iteratively with
    the criterion recomputed on the pruned model each step and, with ``recover_epochs``, fine-tuning between.
    ``recover="distill"`` recovers by distillation instead, from the context's teachers or else the unpruned
    input model.
    """

    criterion: str = option("lrp", help="Channel criterion: lrp, l1, l2, taylor or random.")
    ratio: float | None = option(0.5, help="Share of prunable channels to remove, in (0, 1); ignored when a "
                                 "target is given.")
    target_flops: float | None = option(None, help="Fraction of the original FLOPs to keep; the ratio is searched.")
    target_params: float | None = option(None, help="Fraction of the original parameters to keep.")
    steps: int = option(1, help="Iterative steps (criterion recomputed each step).")
    recover: Recovery | None = option(None, help="Recovery after each step: finetune (the default when "
                                      "recover_epochs > 0 for a classifier with labelled data) or distill from the "
                                      "unpruned model (the default, and the only one, for a model scored without "
                                      "labels: it matches the unpruned model's outputs).")
    recover_epochs: int = option(0, help="Recovery epochs after each step (0: none).")
    recover_lr: float = option(1e-3, help="Learning rate of recovery.")
    samples_per_class: int = option(10, help="Reference samples per class (train split).")
    reference_samples: int = option(64, help="Reference samples of a model scored without labels (any model "
                                    "through its contract: relevance seeded on its own outputs).")
    composite: Composite = option("epsilon-plus-flat", help="LRP composite: epsilon-plus-flat or "
                                  "epsilon-alpha2-beta1.")
    scope: Scope = option(Scope.GLOBAL, help="Where channels compete: across all layers or within each layer.",
                          cli=False)
    normalize: Normalization = option("none", help="Per-layer score normalisation before global ranking: none, "
                                      "mean, sum or max.")
    max_layer_ratio: float = option(0.9, help="No layer loses more than this share of its channels.")
    round_to: int | None = option(8, help="Keep widths multiples of this (1: no rounding).")
    ignore: LayerFilter | None = option(None, help="Layers to leave unpruned: (name, module) -> bool.", cli=False)
    ignore_classifier: bool = option(True, help="Leave the classifier layer unpruned.")
    seed: int = option(0, help="Seed of the reference samples, random scores and recovery.")
    batch_size: int = option(64, help="Batch size of relevance scoring.")
    # Latency target (p50 ms at batch 1 on one runtime): widths chosen by edgetl.prune.budget against an
    # injected latency model (any object with candidates() and predict_ms(); the CLI builds one per device).
    target_latency_ms: float | None = option(None, help="p50 latency target in ms at batch 1 on the device's "
                                             "runtime; needs a latency model (the CLI measures one).", cli=False)
    latency_model: Any = option(None, help="Injected latency model (not a recipe key).", recipe=False, cli=False)

    def __post_init__(self) -> None:
        from edgetl.prune.criteria import CRITERIA, Normalization
        from edgetl.prune.relevance import Composite

        if self.criterion.lower() not in CRITERIA:
            from edgetl.registry import criteria

            criteria().get(self.criterion)  # a plug-in's, or UnknownNameError naming built-ins and plug-ins
        object.__setattr__(self, "criterion", self.criterion.lower())
        object.__setattr__(self, "composite", Composite.parse(self.composite))
        object.__setattr__(self, "normalize", Normalization.parse(self.normalize))
        object.__setattr__(self, "scope", Scope.parse(self.scope))
        if self.recover is not None:
            object.__setattr__(self, "recover", Recovery.parse(self.recover))
        targets = [n for n in ("target_flops", "target_params") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise ConfigError("give one target: target_flops or target_params, not both")
        if self.target_latency_ms is not None:
            self._check_latency_target(targets)
        elif targets:
            object.__setattr__(self, "ratio", None)
            value = getattr(self, targets[0])
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{targets[0]} is the fraction of the original cost to keep and must lie "
                                  f"strictly between 0 and 1, got {value}")
        elif self.ratio is None or not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"pruning ratio must lie strictly between 0 and 1 (share of channels removed), "
                              f"got {self.ratio}")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1], got {self.max_layer_ratio}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.recover_epochs < 0:
            raise ConfigError(f"recover_epochs must be >= 0, got {self.recover_epochs}")
        if self.samples_per_class < 1:
            raise ConfigError(f"samples_per_class must be >= 1, got {self.samples_per_class}")
        if self.reference_samples < 1:
            raise ConfigError(f"reference_samples must be >= 1, got {self.reference_samples}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1 (or None), got {self.round_to}")
        if self.ignore is not None and not callable(self.ignore):
            raise ConfigError("ignore must be a layer filter: a callable (name, module) -> bool")

    def _check_latency_target(self, targets: list[str]) -> None:
        if targets:
            raise ConfigError(f"give one target: target_latency_ms or {targets[0]}, not both")
        if not (isinstance(self.target_latency_ms, (int, float)) and 0 < self.target_latency_ms < math.inf):
            raise ConfigError(f"target_latency_ms must be a positive number of milliseconds, got {self.target_latency_ms}")
        if self.steps != 1:
            raise ConfigError("a latency target prunes in one step (steps=1); recover afterwards with recover_epochs")
        if self.latency_model is None or not callable(getattr(self.latency_model, "predict_ms", None)):
            raise ConfigError("target_latency_ms needs a latency model (latency_model=...): an object with "
                              "candidates(group) and predict_ms(widths), e.g. benchmarks.latency_table's")
        object.__setattr__(self, "ratio", None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["ignore"] = None if self.ignore is None else getattr(self.ignore, "__qualname__", repr(self.ignore))
        lm = self.latency_model
        d["latency_model"] = None if lm is None else (lm.describe() if hasattr(lm, "describe") else type(lm).__name__)
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in d.items()}
