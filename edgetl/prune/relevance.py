"""Layer-wise relevance (LRP) of every convolution/linear output channel, computed with zennit.

The score of a channel is the absolute relevance at that layer's output, summed over spatial positions and over
a reference set (N samples per class), with the relevance seeded as one-hot at the true-class logit
(Yeom et al., "Pruning by Explaining", Pattern Recognition 2021). Any other model (several inputs, several
outputs, no labels) is scored on an :class:`~edgetl.prune.feeds.InputReference`: relevance seeded on its own
outputs by role (the predicted class of logits, masks and sequences; regression outputs relative to their mean),
see :mod:`edgetl.prune.feeds`. zennit's rules run as backward hooks whose
"gradient" *is* the relevance, so the relevance at a layer's output is the gradient of that output tensor under
the composite; edgetl reads it with a tensor hook and never writes an LRP rule itself.

Canonizers make the explained graph follow LRP's assumptions: batch-norm merged into the preceding layer, and
residual additions turned into a ``Sum`` module that the ``Norm`` rule distributes proportionally. zennit ships
the residual canonizer for torchvision ResNets only; for other networks edgetl traces them with ``torch.fx`` and
rewrites each same-shape tensor addition into zennit's ``Sum`` module (:func:`residual_sums`), and where a network
cannot be traced it says so in the result's ``notes`` (its residual additions are then not canonized).
``conservation`` reports how much of the seeded relevance reaches the input, so the scores can be judged.

Example::

    ref = reference_set(splits.train, spec, per_class=10, seed=0)
    result = relevance_scores(model, ref.x, ref.y)
    result.scores["features.3.conv.0"]   # one score per output channel
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgetl.artifact import InputSpec
from edgetl.choice import Choice
from edgetl.data import ImageSet, prepare
from edgetl.errors import DataError
from edgetl.prune.canonize import choose_canonizers, conv_bn_pairs, residual_sums
from edgetl.prune.feeds import InputReference, call

__all__ = ["Composite", "InputReference", "ReferenceSet", "RelevanceResult", "choose_canonizers", "conv_bn_pairs",
           "REFERENCE_BUDGET", "reference_set", "relevance_scores", "residual_sums"]

log = logging.getLogger(__name__)


class Composite(Choice):
    """zennit composites offered for scoring (rules per layer type)."""

    EPSILON_PLUS_FLAT = "epsilon-plus-flat"  # z+ on convs, epsilon on linears, flat on the first layer
    EPSILON_ALPHA2_BETA1 = "epsilon-alpha2-beta1"  # alpha2-beta1 on convs, epsilon on linears

    @classmethod
    def _normalize(cls, text: str) -> str:
        return text.strip().lower().replace("_", "-")

    def build(self, canonizers: list) -> Any:
        from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat

        kind = EpsilonPlusFlat if self is Composite.EPSILON_PLUS_FLAT else EpsilonAlpha2Beta1
        # Biases are left out of the rules (as in the paper's code): after batch-norm merging every layer has a
        # bias, and a rule that counts positive biases absorbs relevance layer after layer (measured on
        # EfficientNet-Lite0: 0.1 % of the seeded relevance reached the input with biases, most without).
        return kind(canonizers=canonizers, zero_params=["bias"])


@dataclass(frozen=True)
class ReferenceSet:
    """The samples scores are computed on: prepared float inputs and their labels."""

    x: Any  # float tensor N x C x H x W, prepared for the model's input spec
    y: Any  # int64 tensor N

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int) -> Iterable[tuple[Any, Any]]:
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


#: The most reference samples a prune draws in all: ``samples_per_class`` of 1,000 classes (ImageNet) would be
#: 10,000 relevance passes, hours on a CPU, for scores that settle on a few hundred samples.
REFERENCE_BUDGET = 512


def reference_set(split: ImageSet, spec: InputSpec, *, per_class: int, seed: int = 0,
                  num_classes: int | None = None, max_total: int | None = REFERENCE_BUDGET) -> ReferenceSet:
    """``per_class`` samples of every class drawn (seeded) from ``split``, prepared for ``spec``.

    When ``per_class`` times the classes exceeds ``max_total`` (None: no bound) the draw is bounded instead:
    one sample per class in turn (classes in a seeded order, classes the split lacks skipped), round after
    round, until ``max_total`` samples, ``per_class`` of every class, or the split is used up; so 1,000
    classes with a budget of 512 give 512 classes one sample each, and 10 classes give ``per_class`` each as
    before (where a class short of ``per_class`` samples is an error naming it).
    """
    import torch

    if per_class < 1:
        raise DataError(f"samples per class must be >= 1, got {per_class}")
    if max_total is not None and max_total < 1:
        raise DataError(f"the reference budget must be >= 1 sample, got {max_total}")
    gen = torch.Generator().manual_seed(seed)
    labels = split.labels
    classes = list(range(num_classes) if num_classes is not None else sorted(set(labels.tolist())))
    if max_total is not None and per_class * len(classes) > max_total:
        order = _bounded_draw(labels, classes, per_class=per_class, max_total=max_total, gen=gen)
        if len(order) == 0:
            raise DataError("the split has no samples to draw a reference set from")
        return ReferenceSet(x=prepare(split.images[order], spec), y=labels[order].clone())
    picked = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} samples in the split, fewer than the {per_class} "
                            "reference samples per class asked for; lower --samples-per-class")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    order = torch.cat(picked)
    return ReferenceSet(x=prepare(split.images[order], spec), y=labels[order].clone())


def _bounded_draw(labels, classes, *, per_class: int, max_total: int, gen):
    """Indices drawn one per class per round (seeded class order and within-class shuffles) up to the bounds."""
    import torch

    pools = []
    for j in torch.randperm(len(classes), generator=gen).tolist():
        idx = torch.nonzero(labels == classes[j]).flatten()
        if len(idx):
            pools.append(idx[torch.randperm(len(idx), generator=gen)][:per_class].tolist())
    chosen: list[int] = []
    for r in range(per_class):
        for pool in pools:
            if len(chosen) >= max_total:
                break
            if r < len(pool):
                chosen.append(pool[r])
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class RelevanceResult:
    """Per-channel relevance by layer name, with what it cost and how well relevance was conserved."""

    scores: dict[str, Any]
    composite: str
    canonizers: list[str]
    notes: list[str] = field(default_factory=list)
    conservation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # the relevance pass over the samples (composite and canonizers registered inside it)
    baseline_seconds: float | None = None  # one plain forward+backward over the same samples
    setup_seconds: float = 0.0  # copying and canonizing the model (fx trace, batch-norm pairs), once per call

    @property
    def cost_ratio(self) -> float | None:
        if not self.baseline_seconds:
            return None
        return self.seconds / self.baseline_seconds

    def summary(self) -> dict[str, Any]:
        return {"composite": self.composite, "canonizers": self.canonizers, "notes": self.notes,
                "conservation": self.conservation, "seconds": round(self.seconds, 4),
                "setup_seconds": round(self.setup_seconds, 4),
                "baseline_seconds": None if self.baseline_seconds is None else round(self.baseline_seconds, 4),
                "cost_ratio": None if self.cost_ratio is None else round(self.cost_ratio, 3)}


def _scored_layers(model, names: Iterable[str] | None) -> dict[str, Any]:
    import torch.nn as nn

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    if names is None:
        return layers
    return {n: layers[n] for n in names if n in layers}


def _channel_axis(module, t) -> int:
    """A convolution's channels are axis 1; a linear layer's the last axis (it may run on ``T, N, F``)."""
    import torch.nn as nn

    return t.ndim - 1 if isinstance(module, nn.Linear) else 1


def _channel_abs_sum(t, axis: int = 1) -> Any:
    """|t| summed over every axis but the channel axis: one value per channel."""
    return t.detach().abs().sum(dim=[d for d in range(t.ndim) if d != axis])


def _channel_abs_and_signed(grad, axis: int = 1) -> Any:
    """Per-channel |grad| sums followed by one more entry: the signed sum of the whole tensor."""
    import torch

    g = grad.detach()
    return torch.cat([_channel_abs_sum(g, axis), g.sum().reshape(1)])


class _OutputGradTap:
    """Forward hooks that attach a tensor hook to each layer's output and reduce its gradient per channel;
    ``reduce(activation, gradient, channel_axis)``."""

    def __init__(self, layers: dict[str, Any], reduce: Callable[[Any, Any, int], Any]) -> None:
        self.totals: dict[str, Any] = {}
        self._handles = []
        for name, module in layers.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name, reduce)))

    def _make_hook(self, name: str, reduce):
        def hook(module, inputs, output):
            if not getattr(output, "requires_grad", False):
                return
            act = output.detach()  # not `output` itself: a hook holding its own tensor is a reference cycle
            axis = _channel_axis(module, output)

            def on_grad(grad):
                value = reduce(act, grad, axis)
                self.totals[name] = value if name not in self.totals else self.totals[name] + value

            output.register_hook(on_grad)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _seed(logits, y):
    import torch

    return torch.zeros_like(logits).scatter_(1, y.view(-1, 1), 1.0)


class _LabelSeeding:
    """A labelled :class:`ReferenceSet` in the shape :class:`~edgetl.prune.feeds.Seeding` has: one-hot at the
    true class."""

    def __init__(self, reference: ReferenceSet) -> None:
        self.reference = reference

    def __len__(self) -> int:
        return len(self.reference)

    def example(self) -> tuple:
        return (self.reference.x[:1],)

    def batches(self, batch_size: int):
        for x, y in self.reference.batches(batch_size):
            yield (x,), len(y), y

    def seed(self, out, y) -> tuple[list, list]:
        return [out], [_seed(out, y)]


def _seeding(reference, model):
    """Labelled classifier references seed the true class; any other reference (:class:`~edgetl.prune.feeds.
    InputReference`) seeds the model's own outputs by role."""
    if isinstance(reference, ReferenceSet):
        return _LabelSeeding(reference)
    return reference.seeding(model)


def _batches(seeding, batch_size: int):
    """(inputs, samples, seed target) per batch; an :class:`InputReference` yields (inputs, samples)."""
    for item in seeding.batches(batch_size):
        yield item if len(item) == 3 else (item[0], item[1], item[1])


def _with_grad(example: tuple) -> tuple:
    """Copies of the inputs, float ones requiring grad (their gradient is the input relevance)."""
    return tuple(x.clone().requires_grad_(True) if x.is_floating_point() else x for x in example)


def _input_sum(example: tuple) -> float:
    return sum(float(x.grad.sum()) for x in example if x.grad is not None)


def plain_gradient_seconds(model, reference, *, batch_size: int = 64) -> float:
    """Seconds of one ordinary forward+backward (parameter gradients included) over the reference set."""
    import torch

    work = copy.deepcopy(model).eval()
    seeding = _seeding(reference, work)
    first, n0, t0 = next(_batches(seeding, 1))
    torch.autograd.backward(*seeding.seed(call(work, first), t0))  # untimed warm-up, as for the LRP pass
    work.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for example, _, target in _batches(seeding, batch_size):
        torch.autograd.backward(*seeding.seed(call(work, example), target))
    return time.perf_counter() - start


def relevance_scores(model, reference, *, composite: Composite | str = Composite.EPSILON_PLUS_FLAT,
                     layers: Iterable[str] | None = None, batch_size: int = 64,
                     measure_cost: bool = True) -> RelevanceResult:
    """LRP relevance per output channel of every conv/linear layer (or of ``layers``), summed over ``reference``:
    a labelled :class:`ReferenceSet` (seeded at the true class) or an :class:`~edgetl.prune.feeds.InputReference`
    of any model (named inputs, seeded on its own outputs by role).

    ``model`` is not modified: scoring runs on a copy, so canonizers never touch the caller's weights.
    With ``measure_cost`` the result also holds the time of one plain forward+backward over the same samples.
    """
    import torch

    composite = Composite.parse(composite)
    setup_start = time.perf_counter()
    seeding = _seeding(reference, model)  # regression means from the caller's (unchanged) model
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)  # LRP needs relevance, not parameter gradients
    work, canonizers, canon_names, notes = choose_canonizers(work, seeding.example())
    setup = time.perf_counter() - setup_start  # once per scoring call, whatever the number of samples
    targets = _scored_layers(work, layers)
    input_relevance, seeded, seed_total, layer_sums = 0.0, 0, 0.0, {}
    start = time.perf_counter()
    comp = composite.build(canonizers)
    with comp.context(work) as hooked:
        # one untimed single-sample pass first: a cold first call would be charged to LRP otherwise
        warm = time.perf_counter()
        first, _, t0 = next(_batches(seeding, 1))
        torch.autograd.backward(*seeding.seed(call(hooked, _with_grad(first)), t0))
        start += time.perf_counter() - warm
        # One tap per layer gives both the per-channel |relevance| (the score) and the signed total (conservation):
        # each tensor hook costs a Python call per layer and batch, which is most of LRP's overhead at small inputs.
        tap = _OutputGradTap(targets, lambda out, grad, axis: _channel_abs_and_signed(grad, axis))
        try:
            for example, n, target in _batches(seeding, batch_size):
                example = _with_grad(example)
                tensors, seeds = seeding.seed(call(hooked, example), target)
                torch.autograd.backward(tensors, grad_tensors=seeds)
                input_relevance += _input_sum(example)
                seeded += n
                seed_total += sum(float(s.sum()) for s in seeds)
        finally:
            tap.remove()
        layer_sums = {n: float(v[-1]) / max(seeded, 1) for n, v in tap.totals.items()}
    seconds = time.perf_counter() - start
    conservation = _conservation(input_relevance, seeded, seed_total, layer_sums, notes)
    for note in notes:
        log.info("LRP: %s", note)
    baseline = plain_gradient_seconds(model, reference, batch_size=batch_size) if measure_cost else None
    scores = {n: v[:-1].float() for n, v in tap.totals.items()}
    return RelevanceResult(scores=scores, composite=composite.value, canonizers=canon_names, notes=notes,
                           conservation=conservation, seconds=seconds, baseline_seconds=baseline,
                           setup_seconds=setup)


def _conservation(input_relevance: float, seeded: int, seed_total: float, layer_sums: dict[str, float],
                  notes: list[str]) -> dict[str, float | None]:
    """Input relevance over the seeded relevance (per sample), and the per-layer signed totals per sample."""
    if abs(seed_total) > 1e-6 * max(seeded, 1):
        ratio: float | None = input_relevance / seed_total
    else:
        ratio = None
        notes.append("the seeded relevance sums to about zero (regression outputs are seeded relative to their "
                     "mean), so no conservation ratio is reported")
    out: dict[str, float | None] = {"input_over_seed": ratio}
    if layer_sums:
        vals = sorted(layer_sums.values())
        out.update({"layer_min": vals[0], "layer_median": vals[len(vals) // 2], "layer_max": vals[-1]})
    return out


def activation_gradient_scores(model, reference, *, layers: Iterable[str] | None = None,
                               batch_size: int = 64) -> tuple[dict[str, Any], float]:
    """First-order Taylor scores (Molchanov et al. 2017): |sum over space of activation x gradient| per sample
    and channel, summed over ``reference``. With a labelled :class:`ReferenceSet` the gradient is the
    cross-entropy's with the true labels (as in the paper); with any other reference it is that of the seeded
    outputs (the relevance seeds of :mod:`edgetl.prune.feeds`: the model's own prediction, no labels), so the
    score estimates how much the chosen outputs change when the channel is removed. Returns the scores by layer
    name and the seconds spent."""
    import torch
    import torch.nn.functional as F

    seeding = None if isinstance(reference, ReferenceSet) else reference.seeding(model)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)

    def reduce(out, grad, axis):
        prod = (out.detach() * grad.detach()).movedim(axis, -1)
        if prod.ndim > 2:  # one value per sample (the leading axis) and channel: space and time summed
            prod = prod.flatten(1, -2).sum(1)
        return prod.abs().sum(0)

    tap = _OutputGradTap(_scored_layers(work, layers), reduce)
    start = time.perf_counter()
    try:
        if seeding is None:
            for x, y in reference.batches(batch_size):
                x = x.clone().requires_grad_(True)  # so every layer output carries a gradient
                loss = F.cross_entropy(work(x), y, reduction="sum")
                loss.backward()
        else:
            for example, _, target in _batches(seeding, batch_size):
                torch.autograd.backward(*seeding.seed(call(work, _with_grad(example)), target))
    finally:
        tap.remove()
    return {n: v.float() for n, v in tap.totals.items()}, time.perf_counter() - start
