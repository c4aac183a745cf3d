"""Layer-wise relevance (LRP) of every convolution/linear output channel, computed with zennit.

The score of a channel is the absolute relevance at that layer's output, summed over spatial positions and over
a reference set (N samples per class), with the relevance seeded as one-hot at the true-class logit
(Yeom et al., "Pruning by Explaining", Pattern Recognition 2021). zennit's rules run as backward hooks whose
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

__all__ = ["Composite", "ReferenceSet", "RelevanceResult", "choose_canonizers", "conv_bn_pairs", "reference_set",
           "relevance_scores", "residual_sums"]

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


def reference_set(split: ImageSet, spec: InputSpec, *, per_class: int, seed: int = 0,
                  num_classes: int | None = None) -> ReferenceSet:
    """``per_class`` samples of every class drawn (seeded) from ``split``, prepared for ``spec``."""
    import torch

    if per_class < 1:
        raise DataError(f"samples per class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    labels = split.labels
    classes = range(num_classes) if num_classes is not None else sorted(set(labels.tolist()))
    picked = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} samples in the split, fewer than the {per_class} "
                            "reference samples per class asked for; lower --samples-per-class")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    order = torch.cat(picked)
    return ReferenceSet(x=prepare(split.images[order], spec), y=labels[order].clone())


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


def _is_torchvision_resnet(model) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules())


def conv_bn_pairs(model, example) -> list[tuple[tuple[str], str]]:
    """(conv/linear name,), batch-norm name) for every batch-norm whose input is exactly a conv/linear output.

    Found by running ``example`` through the model rather than by module order: architectures such as
    EfficientNet-Lite wrap their convolutions in padding modules, which defeats zennit's sequential search.
    """
    import torch
    import torch.nn as nn

    produced: dict[int, tuple[str, Any]] = {}
    pairs: list[tuple[tuple[str], str]] = []
    handles = []

    def on_layer(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)  # keep the tensor alive so its id stays unique
        return hook

    def on_bn(name):
        def hook(module, inputs):
            src = produced.get(id(inputs[0]))
            if src is not None and src[1] is inputs[0]:
                pairs.append(((src[0],), name))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(m.register_forward_hook(on_layer(name)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    seen: set[str] = set()
    return [p for p in pairs if not (p[1] in seen or seen.add(p[1]))]


def residual_sums(model, example) -> tuple[Any, int]:
    """A ``torch.fx`` copy of ``model`` in which every addition of two same-shape tensors is a zennit ``Sum``
    module, so the composite's ``Norm`` rule splits relevance between the branches in proportion to their
    contributions: the residual canonizer zennit ships for torchvision ResNets only, for any traceable network.

    Module names are kept (``fx`` keeps the submodule paths), so per-layer scores still map to the original
    layers. Returns the copy and the number of additions rewritten; raises what ``torch.fx`` raises for a
    network it cannot trace (the caller falls back and says so).
    """
    import operator

    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp
    from zennit.layer import Sum

    class _LayerLeaves(fx.Tracer):
        # Subclasses of conv/linear/norm layers (EfficientNet-Lite's same-padding convs, say) stay whole modules:
        # traced into, they would become bare functions that no zennit rule (and no score) can attach to.
        def is_leaf_module(self, m, qualname: str) -> bool:
            layer = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm)
            return isinstance(m, layer) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, _LayerLeaves().trace(model), class_name=type(model).__name__)
    ShapeProp(gm).propagate(example)
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, operator.iadd, torch.add):
            continue
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        metas = [a.meta.get("tensor_meta") for a in node.args]
        if any(m is None or not hasattr(m, "shape") for m in metas) or metas[0].shape != metas[1].shape:
            continue  # scalars, shapes, or broadcasting adds (a bias): not a residual join
        name = f"edgetl_residual_sum_{count}"
        gm.add_submodule(name, Sum(dim=-1))
        with gm.graph.inserting_before(node):
            stacked = gm.graph.call_function(torch.stack, args=(tuple(node.args),), kwargs={"dim": -1})
            summed = gm.graph.call_module(name, args=(stacked,))
        summed.meta = dict(node.meta)  # a following block's residual add reads its shape from here
        node.replace_all_uses_with(summed)
        gm.graph.erase_node(node)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), count


def choose_canonizers(model, example) -> tuple[Any, list, list[str], list[str]]:
    """Canonize ``model`` for LRP: (model to explain, zennit canonizers, their names, honest notes on gaps).

    torchvision ResNets get zennit's own block canonizers; any other network's residual additions are rewritten
    into ``Sum`` modules by :func:`residual_sums` when ``torch.fx`` can trace it (the returned model is then that
    traced copy); batch-norms directly after a conv/linear are merged into it.
    """
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    names: list[str] = []
    notes: list[str] = []
    extra: list = []
    if _is_torchvision_resnet(model):
        extra = [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
        names.append("ResNet block canonizers (residual addition as a Sum module, Norm rule)")
    else:
        try:
            traced, n_sums = residual_sums(model, example)
        except Exception as e:  # noqa: BLE001 - fx raises many types; any of them means "not traceable"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            notes.append(f"no residual-sum canonizer for {type(model).__name__}: torch.fx cannot trace it ({first}); "
                         "if its forward() adds branches, each addition passes relevance to both branches "
                         "unnormalised, so relevance is not conserved across residual blocks")
        else:
            model = traced
            if n_sums:
                names.append(f"residual sums ({n_sums} additions traced with torch.fx into Sum modules, Norm rule)")
    pairs = conv_bn_pairs(model, example)
    canonizers: list = [NamedMergeBatchNorm(pairs)] if pairs else []
    if pairs:
        names.insert(0, f"NamedMergeBatchNorm ({len(pairs)} batch-norms merged into the layer feeding them)")
    bn_total = sum(isinstance(m, __import__("torch").nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if bn_total > len(pairs):
        notes.append(f"{bn_total - len(pairs)} of {bn_total} batch-norm layers do not directly follow a conv/linear "
                     "layer and were not merged (Pass rule)")
    return model, canonizers + extra, names, notes


def _scored_layers(model, names: Iterable[str] | None) -> dict[str, Any]:
    import torch.nn as nn

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    if names is None:
        return layers
    return {n: layers[n] for n in names if n in layers}


def _channel_abs_sum(t) -> Any:
    """|t| summed over the batch and every axis after the channel axis: one value per channel."""
    return t.detach().abs().sum(dim=[d for d in range(t.ndim) if d != 1])


def _channel_abs_and_signed(grad) -> Any:
    """Per-channel |grad| sums followed by one more entry: the signed sum of the whole tensor."""
    import torch

    g = grad.detach()
    return torch.cat([_channel_abs_sum(g), g.sum().reshape(1)])


class _OutputGradTap:
    """Forward hooks that attach a tensor hook to each layer's output and reduce its gradient per channel."""

    def __init__(self, layers: dict[str, Any], reduce: Callable[[Any, Any], Any]) -> None:
        self.totals: dict[str, Any] = {}
        self._handles = []
        for name, module in layers.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name, reduce)))

    def _make_hook(self, name: str, reduce):
        def hook(module, inputs, output):
            if not getattr(output, "requires_grad", False):
                return
            act = output.detach()  # not `output` itself: a hook holding its own tensor is a reference cycle

            def on_grad(grad):
                value = reduce(act, grad)
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


def plain_gradient_seconds(model, reference: ReferenceSet, *, batch_size: int = 64) -> float:
    """Seconds of one ordinary forward+backward (parameter gradients included) over the reference set."""
    work = copy.deepcopy(model).eval()
    work(reference.x[:1]).sum().backward()  # untimed warm-up, as for the LRP pass
    work.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for x, y in reference.batches(batch_size):
        logits = work(x)
        logits.gather(1, y.view(-1, 1)).sum().backward()
    return time.perf_counter() - start


def relevance_scores(model, reference: ReferenceSet, *, composite: Composite | str = Composite.EPSILON_PLUS_FLAT,
                     layers: Iterable[str] | None = None, batch_size: int = 64,
                     measure_cost: bool = True) -> RelevanceResult:
    """LRP relevance per output channel of every conv/linear layer (or of ``layers``), summed over ``reference``.

    ``model`` is not modified: scoring runs on a copy, so canonizers never touch the caller's weights.
    With ``measure_cost`` the result also holds the time of one plain forward+backward over the same samples.
    """
    import torch

    composite = Composite.parse(composite)
    setup_start = time.perf_counter()
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)  # LRP needs relevance, not parameter gradients
    work, canonizers, canon_names, notes = choose_canonizers(work, reference.x[:1])
    setup = time.perf_counter() - setup_start  # once per scoring call, whatever the number of samples
    targets = _scored_layers(work, layers)
    input_relevance, seeded, layer_sums = 0.0, 0.0, {}
    start = time.perf_counter()
    comp = composite.build(canonizers)
    with comp.context(work) as hooked:
        # one untimed single-sample pass first: a cold first call would be charged to LRP otherwise
        warm = time.perf_counter()
        x0 = reference.x[:1].clone().requires_grad_(True)
        out0 = hooked(x0)
        torch.autograd.backward(out0, grad_tensors=_seed(out0, reference.y[:1]))
        start += time.perf_counter() - warm
        # One tap per layer gives both the per-channel |relevance| (the score) and the signed total (conservation):
        # each tensor hook costs a Python call per layer and batch, which is most of LRP's overhead at small inputs.
        tap = _OutputGradTap(targets, lambda out, grad: _channel_abs_and_signed(grad))
        try:
            for x, y in reference.batches(batch_size):
                x = x.clone().requires_grad_(True)
                logits = hooked(x)
                torch.autograd.backward(logits, grad_tensors=_seed(logits, y))
                input_relevance += float(x.grad.sum())
                seeded += len(y)
        finally:
            tap.remove()
        layer_sums = {n: float(v[-1]) / max(seeded, 1) for n, v in tap.totals.items()}
    seconds = time.perf_counter() - start
    conservation = {"input_over_seed": input_relevance / max(seeded, 1)}
    if layer_sums:
        vals = sorted(layer_sums.values())
        conservation.update({"layer_min": vals[0], "layer_median": vals[len(vals) // 2], "layer_max": vals[-1]})
    for note in notes:
        log.info("LRP: %s", note)
    baseline = plain_gradient_seconds(model, reference, batch_size=batch_size) if measure_cost else None
    scores = {n: v[:-1].float() for n, v in tap.totals.items()}
    return RelevanceResult(scores=scores, composite=composite.value, canonizers=canon_names, notes=notes,
                           conservation=conservation, seconds=seconds, baseline_seconds=baseline,
                           setup_seconds=setup)


def activation_gradient_scores(model, reference: ReferenceSet, *, layers: Iterable[str] | None = None,
                               batch_size: int = 64) -> tuple[dict[str, Any], float]:
    """First-order Taylor scores (Molchanov et al. 2017): |sum over space of activation x dLoss/dactivation|
    per sample and channel, summed over ``reference``. Loss: cross-entropy with the true labels. Returns the
    scores by layer name and the seconds spent."""
    import torch.nn.functional as F

    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)

    def reduce(out, grad):
        prod = (out.detach() * grad.detach())
        if prod.ndim > 2:
            prod = prod.flatten(2).sum(2)
        return prod.abs().sum(0)

    tap = _OutputGradTap(_scored_layers(work, layers), reduce)
    start = time.perf_counter()
    try:
        for x, y in reference.batches(batch_size):
            x = x.clone().requires_grad_(True)  # so every layer output carries a gradient
            loss = F.cross_entropy(work(x), y, reduction="sum")
            loss.backward()
    finally:
        tap.remove()
    return {n: v.float() for n, v in tap.totals.items()}, time.perf_counter() - start
