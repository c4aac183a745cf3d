"""Pruning criteria behind one interface: each is a ``torch_pruning`` ``Importance``.

``criterion(group) -> Tensor`` gives one score per channel of a dependency group (coupled channels across
residual adds, depthwise convolutions and concatenations), so torch-pruning's dependency graph does the
surgery whatever the criterion. Scores from several layers of a group are combined with torch-pruning's own
group reduction (``mean`` by default) and optionally normalised per group with its ``_normalize``.

Data-driven criteria (``lrp``, ``taylor``) are first ``prepare``-d on a reference set; they hold per-channel
scores by layer *name*, so the same scores serve any copy of the model (the FLOPs-target search prunes copies).

Example::

    crit = make_criterion("lrp")
    info = crit.prepare(model, reference)          # relevance, cost ratio, canonizers
    pruner = tp.pruner.MetaPruner(model, example, importance=crit.bind(model), pruning_ratio=0.3)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

from edgetl.choice import Choice
from edgetl.prune.relevance import Composite, ReferenceSet, activation_gradient_scores, relevance_scores

__all__ = [
    "CRITERIA",
    "Criterion",
    "ImportanceCriterion",
    "L1Criterion",
    "L2Criterion",
    "LRPCriterion",
    "Normalization",
    "RandomCriterion",
    "TaylorCriterion",
    "make_criterion",
]

_OUT_CHANNEL_FNS = (tpf.prune_conv_out_channels, tpf.prune_depthwise_conv_out_channels, tpf.prune_linear_out_channels)


class Normalization(Choice):
    """Per-group score normalisation before global ranking (torch-pruning's normalisers)."""

    NONE = "none"
    MEAN = "mean"
    SUM = "sum"
    MAX = "max"


    @property
    def tp_name(self) -> str | None:
        return None if self is Normalization.NONE else self.value


class Criterion(tp.importance.GroupMagnitudeImportance):
    """Base of edgetl's criteria: a torch-pruning group importance that may need a reference set first."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False

    def __init__(self, *, normalize: Normalization | str = Normalization.NONE, group_reduction: str = "mean",
                 **magnitude_kw: Any) -> None:
        super().__init__(group_reduction=group_reduction, normalizer=Normalization.parse(normalize).tp_name,
                         **magnitude_kw)

    def prepare(self, model, reference: ReferenceSet | None) -> dict[str, Any]:
        """Compute whatever the criterion needs from ``model`` and the reference set; returns metrics."""
        return {}

    def bind(self, model) -> Criterion:
        """Attach to the model (or a copy of it) whose groups will be scored; returns self."""
        return self


class _ChannelScoreCriterion(Criterion):
    """Scores precomputed per output channel of named layers, read out for each layer of a group."""

    needs_data = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.scores: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}

    def bind(self, model) -> Criterion:
        self._names = {id(m): n for n, m in model.named_modules()}
        return self

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        group_imp, group_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            if dep.handler not in _OUT_CHANNEL_FNS:
                continue
            score = self.scores.get(self._names.get(id(dep.target.module), ""))
            if score is None or len(score) <= max(idxs, default=-1):
                continue
            group_imp.append(score[list(idxs)])
            group_idxs.append(group[i].root_idxs)
        if not group_imp:
            return None
        return self._normalize(self._reduce(group_imp, group_idxs), self.normalizer)


class LRPCriterion(_ChannelScoreCriterion):
    """Relevance (LRP, zennit) at each layer's output, seeded at the true-class logit (a labelled reference set)
    or on the model's own outputs (an :class:`~edgetl.prune.feeds.InputReference`)."""

    name = "lrp"

    def __init__(self, *, composite: Composite | str = Composite.EPSILON_PLUS_FLAT, batch_size: int = 64,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.composite = Composite.parse(composite)
        self.batch_size = batch_size

    def prepare(self, model, reference: ReferenceSet | None) -> dict[str, Any]:
        result = relevance_scores(model, reference, composite=self.composite, batch_size=self.batch_size)
        self.scores = result.scores
        self.bind(model)
        return {"criterion": self.name, "reference_samples": len(reference), **result.summary()}


class TaylorCriterion(_ChannelScoreCriterion):
    """First-order Taylor (activation x gradient of the cross-entropy, or of the seeded outputs without labels) at
    each layer's output."""

    name = "taylor"

    def __init__(self, *, batch_size: int = 64, **kw: Any) -> None:
        super().__init__(**kw)
        self.batch_size = batch_size

    def prepare(self, model, reference: ReferenceSet | None) -> dict[str, Any]:
        self.scores, seconds = activation_gradient_scores(model, reference, batch_size=self.batch_size)
        self.bind(model)
        return {"criterion": self.name, "reference_samples": len(reference), "seconds": round(seconds, 4)}


class L1Criterion(Criterion):
    """Weight magnitude (L1) of the group's filters: torch-pruning's group magnitude importance."""

    name = "l1"

    def __init__(self, **kw: Any) -> None:
        super().__init__(p=1, **kw)


class L2Criterion(Criterion):
    """Weight magnitude (L2) of the group's filters."""

    name = "l2"

    def __init__(self, **kw: Any) -> None:
        super().__init__(p=2, **kw)


class RandomCriterion(Criterion):
    """Uniform random scores (seeded): the baseline every criterion must beat."""

    name = "random"

    def __init__(self, *, seed: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self._gen)


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in
                                        (LRPCriterion, L1Criterion, L2Criterion, TaylorCriterion, RandomCriterion)}


class ImportanceCriterion(Criterion):
    """Any torch-pruning ``Importance`` (a plug-in's, say) used as an edgetl criterion; it needs no reference set.

    Its scores are normalised per group like edgetl's own when ``normalize`` asks for it.
    """

    def __init__(self, importance: tp.importance.Importance, *, name: str,
                 normalize: Normalization | str = Normalization.NONE) -> None:
        super().__init__(normalize=normalize)
        self.importance, self.name = importance, name

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        scores = self.importance(group)
        if scores is None or self.normalizer is None:
            return scores
        return self._normalize(scores, self.normalizer)


def make_criterion(name: str, *, normalize: Normalization | str = Normalization.NONE,
                   composite: Composite | str = Composite.EPSILON_PLUS_FLAT, seed: int = 0,
                   batch_size: int = 64) -> Criterion:
    """A criterion by name: ``lrp``, ``l1``, ``l2``, ``taylor``, ``random`` or a plug-in's (``edgetl.criteria``
    entry point: an edgetl :class:`Criterion` or any torch-pruning ``Importance``); a wrong name suggests the
    nearest."""
    key = name.lower()
    if key not in CRITERIA:
        from edgetl.registry import criteria

        kind = criteria().load(key)
        if issubclass(kind, Criterion):
            return kind(normalize=normalize)
        return ImportanceCriterion(kind(), name=key, normalize=normalize)
    kind = CRITERIA[key]
    if kind is LRPCriterion:
        return LRPCriterion(composite=composite, batch_size=batch_size, normalize=normalize)
    if kind is TaylorCriterion:
        return TaylorCriterion(batch_size=batch_size, normalize=normalize)
    if kind is RandomCriterion:
        return RandomCriterion(seed=seed, normalize=normalize)
    return kind(normalize=normalize)
