"""Structured pruning: rank channels with a criterion, remove them with torch-pruning's dependency graph.

torch-pruning finds which channels are coupled (residual additions, depthwise convolutions, concatenations) and
performs the surgery, so the result is a genuinely smaller model. edgetl does the ranking itself, on top of the
library's group scores, because it must never fail silently: torch-pruning skips a group that would be emptied
and its per-layer cap does not bind within a step. Here every layer keeps at least
``1 - max_layer_ratio`` of its original channels (and at least one ``round_to`` block), and a plan that would
empty a layer is an error naming it.

The stage is ``prune(artifact, config, *, data=None, ctx=None, recover=None)``; its options are in
:mod:`edgetl.prune.config`, one step's graph, plan and surgery in :mod:`edgetl.prune.surgery`.

Example::

    pruned = prune(teacher, PruneConfig(criterion="lrp", ratio=0.5), data=splits)
    pruned.history[-1].metrics["params_after"], pruned.history[-1].metrics["val_accuracy_after"]
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.data import DataSplits, check_classes
from edgetl.errors import ConfigError, ModelError
from edgetl.inputs import InputSet
from edgetl.prune.config import LayerFilter, PruneConfig, Recover, Recovery, Scope, layers_matching
from edgetl.prune.criteria import Criterion, make_criterion
from edgetl.prune.flops import layer_widths, model_cost
from edgetl.prune.relevance import reference_set
from edgetl.prune.surgery import PrunePlan, prune_model
from edgetl.stages import StageContext

__all__ = ["LayerFilter", "PruneConfig", "PrunePlan", "Recovery", "Scope", "layers_matching", "prune", "prune_model"]


# --------------------------------------------------------------------------- search
def search_ratio(model, example, criterion: Criterion, config: PruneConfig, base, arch, *,
                 cost: Callable[[Any], Any]) -> float:
    """The smallest channel ratio whose one-shot result meets the FLOPs or parameter target; ``cost(model)``
    gives a pruned trial's :class:`~edgetl.prune.flops.ModelCost`."""
    key = "flops" if config.target_flops is not None else "params"
    target = (config.target_flops if key == "flops" else config.target_params) * getattr(base, key)
    measure = cost

    def cost_at(ratio: float) -> int:
        trial = copy.deepcopy(model)
        prune_model(trial, example, criterion, ratio=ratio, config=config, arch=arch)
        c = measure(trial)
        criterion.bind(model)
        return getattr(c, key)

    hi = min(0.99, config.max_layer_ratio if config.max_layer_ratio < 1.0 else 0.99)
    reached = cost_at(hi)
    if reached > target:
        raise ConfigError(
            f"target {key} {target / getattr(base, key):.1%} of the original is out of reach: pruning every layer "
            f"down to the cap (max_layer_ratio {config.max_layer_ratio}) keeps {reached / getattr(base, key):.1%}; "
            "reaching it would empty layers. Raise the target or --max-layer-ratio")
    lo = 0.0
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        if cost_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- stage
def _default_recover(epochs: int, lr: float, seed: int) -> Recover:
    from edgetl.train import fit

    def recover(art: Artifact, data: DataSplits) -> Artifact:
        result = fit(art.model, data, art.input_spec, epochs=epochs, lr=lr, seed=seed, description="recover")
        return art.with_stage(StageRecord("recover", {"epochs": epochs, "lr": lr},
                                          {"val_accuracy": result.best_val_accuracy}, result.seconds))

    return recover


def _recovery(artifact: Artifact, config: PruneConfig, ctx: StageContext, recover: Recover | None) -> Recover | None:
    """The recovery step: the caller's hook, else what ``config.recover`` and ``recover_epochs`` ask for."""
    if recover is not None:
        if config.recover is not None:
            raise ConfigError(f"give a recovery hook (recover=) or config.recover ({config.recover}), not both")
        return recover
    if config.recover is Recovery.DISTILL:
        from edgetl.distill import DistillConfig, recovery_from

        # The pruned network keeps its trained weights, so recovery uses the recovery learning rate (1e-3), not
        # distillation's from-scratch default (3e-3). On the demo teacher (LRP 0.5, 97.60 % test before pruning):
        # 2 epochs at 3e-3 reached 94.40 % test; 8 epochs at 1e-3 reached 97.47 % (val 96.67 % after 3 epochs).
        teachers = ctx.teachers or (artifact,)
        cfg = DistillConfig(epochs=max(1, config.recover_epochs), lr=config.recover_lr, seed=config.seed)
        return recovery_from(teachers if len(teachers) > 1 else teachers[0], cfg)
    if config.recover_epochs > 0:
        return _default_recover(config.recover_epochs, config.recover_lr, config.seed)
    return None


@dataclass
class _Setup:
    """What one pruning run measures and scores before any channel is removed."""

    model: Any
    example: Any
    criterion: Criterion
    reference: Any
    base: Any
    widths_before: dict[str, int]
    acc_before: float | None
    arch: str


def _setup(artifact: Artifact, config: PruneConfig, data: DataSplits | None, needs_data: bool) -> _Setup:
    import torch

    from edgetl.train import evaluate_module

    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ModelError(f"pruning needs a PyTorch model; this artifact is {artifact.format.value}")
    criterion = make_criterion(config.criterion, normalize=config.normalize, composite=config.composite,
                               seed=config.seed, batch_size=config.batch_size)
    if data is None and (criterion.needs_data or needs_data):
        raise ConfigError(f"criterion {config.criterion!r} and recovery need data (a reference set); pass data=")
    if data is not None:
        check_classes(artifact.labels, data)
    spec = artifact.input_spec
    model = copy.deepcopy(artifact.model).eval()
    reference = None
    if criterion.needs_data:
        reference = reference_set(data.train, spec, per_class=config.samples_per_class, seed=config.seed,
                                  num_classes=data.num_classes)
    return _Setup(model=model, example=torch.zeros(spec.batch_shape(1)), criterion=criterion, reference=reference,
                  base=model_cost(model, spec.shape), widths_before=layer_widths(model),
                  acc_before=evaluate_module(model, data.val, spec)["accuracy"] if data is not None else None,
                  arch=artifact.arch or type(artifact.model).__name__)


def prune(artifact: Artifact, config: PruneConfig | None = None, *, data: DataSplits | InputSet | None = None,
          ctx: StageContext | None = None, recover: Recover | None = None) -> Artifact:
    """Prune a PyTorch artifact's channels; returns a new artifact whose model is genuinely smaller.

    ``data`` an :class:`~edgetl.inputs.InputSet` (unlabelled inputs by name, read against ``artifact.contract``)
    prunes any model: several inputs and outputs, relevance on its own outputs, fidelity against the unpruned
    model instead of top-1 (:mod:`edgetl.prune.contract_prune`).

    ``data`` supplies the reference set (``samples_per_class`` per class from its train split) for data-driven
    criteria, the accuracy before/after (val split) and recovery training. ``recover`` replaces the recovery
    ``config`` asks for (fine-tuning for ``recover_epochs``, or distillation from ``ctx.teachers``, else from the
    unpruned input). The history keeps each step's recovery record before the final ``prune`` record.

    Example::

        small = prune(teacher, PruneConfig(ratio=0.5, recover="distill", recover_epochs=2), data=splits)
    """
    from edgetl.train import evaluate_module

    config = config or PruneConfig()
    if isinstance(data, InputSet):  # any model through its contract: unlabelled inputs by name
        from edgetl.prune.contract_prune import prune_any

        return prune_any(artifact, config, data, ctx=ctx, recover=recover)
    ctx = ctx or StageContext()
    start = time.perf_counter()
    with ctx.reporting():
        recover = _recovery(artifact, config, ctx, recover)
        s = _setup(artifact, config, data, needs_data=bool(config.recover_epochs) or recover is not None)
        scoring = [s.criterion.prepare(s.model, s.reference)]
        ratio = config.ratio
        if ratio is None and config.target_latency_ms is None:
            ratio = search_ratio(s.model, s.example, s.criterion, config, s.base, s.arch,
                                 cost=lambda m: model_cost(m, artifact.input_spec.shape))
        current, steps, capped, initial, allocation = _prune_steps(artifact, config, s, ratio, data, recover,
                                                                   scoring)
        if allocation is not None:  # latency target: the ratio is what the allocation removed
            ratio = steps[-1]["ratio"]
    model = s.model.eval()
    spec = artifact.input_spec
    after = model_cost(model, spec.shape)
    metrics = {
        "criterion": config.criterion,
        "ratio": round(ratio, 4),
        "params_before": s.base.params, "params_after": after.params,
        "flops_before": s.base.flops, "flops_after": after.flops,
        "macs_before": s.base.macs, "macs_after": after.macs,
        "bytes_before": s.base.bytes, "bytes_after": after.bytes,
        "params_reduction": 1.0 - after.params / s.base.params,
        "flops_reduction": 1.0 - after.flops / s.base.flops if s.base.flops else 0.0,
        "val_accuracy_before": s.acc_before,
        "val_accuracy_after": evaluate_module(model, data.val, spec)["accuracy"] if data is not None else None,
        "prunable_channels_before": sum((initial or {}).values()),
        "capped_layers": sorted(capped),
        "steps": steps,
        "scoring": scoring,
        "widths_before": s.widths_before, "widths_after": layer_widths(model),
    }
    if allocation is not None:
        metrics["latency_allocation"] = allocation
    record = StageRecord("prune", config.to_dict(), metrics, time.perf_counter() - start)
    return current.with_stage(record, model=model)


def _prune_steps(artifact: Artifact, config: PruneConfig, s: _Setup, ratio: float | None, data: DataSplits | None,
                 recover: Recover | None, scoring: list) -> tuple[Artifact, list, set, dict[str, int] | None, Any]:
    """Prune ``s.model`` in place over ``config.steps`` steps, recovering after each; returns the artifact
    carrying each step's recovery records, the per-step info, the capped layers, the original widths and the
    latency allocation (None without a latency target)."""
    from edgetl.train import evaluate_module

    steps, capped = [], set()
    initial: dict[str, int] | None = None
    current = artifact
    allocation = None
    for step in range(1, config.steps + 1):
        if step > 1:
            scoring.append(s.criterion.prepare(s.model, s.reference))
        step_ratio = ratio * step / config.steps if ratio is not None else None
        plan = prune_model(s.model, s.example, s.criterion, ratio=step_ratio, config=config, initial=initial,
                           arch=s.arch)
        if plan.latency is not None:  # latency target: the ratio is what the allocation removed
            step_ratio = sum(plan.removals.values()) / max(1, sum(plan.sizes.values()))
            allocation = plan.latency
        capped.update(plan.capped)
        initial = initial or plan.sizes
        info: dict[str, Any] = {"step": step, "ratio": round(step_ratio, 4),
                                "channels_removed": sum(plan.removals.values())}
        if recover is not None:
            current = current.with_stage(StageRecord("prune-step", {"step": step}, {}), model=s.model)
            recovered = recover(current, data)
            if recovered.model is not s.model:  # keep the graph's modules: copy weights back
                s.model.load_state_dict(recovered.model.state_dict())
            # the recovery's own record (distillation, fine-tuning) stays in the history
            current = dataclasses.replace(current, history=list(recovered.history))
            info["val_accuracy_after_recovery"] = evaluate_module(s.model, data.val, artifact.input_spec)["accuracy"]
        steps.append(info)
    return current, steps, capped, initial, allocation
