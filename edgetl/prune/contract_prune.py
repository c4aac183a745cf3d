"""Pruning any model through its contract: several inputs, several outputs (a multi-head detector, a segmenter,
a sequence model), unlabelled data.

What changes against the classifier path (:mod:`edgetl.prune.pruner`): the reference samples are inputs by name
(:class:`~edgetl.prune.feeds.InputReference`, relevance seeded on the model's own outputs), every output layer
found by tracing stays unpruned and every output keeps its shape (:func:`~edgetl.prune.surgery.prune_model`),
FLOPs are counted on a real sample, and the result is measured label-free: fidelity of the pruned model against
the unpruned one on held-out samples (:func:`edgetl.fidelity.compare`), the task's headline metric instead of
top-1. Recovery is distillation on the model's own outputs (:mod:`edgetl.distill.outputs`): no labels.

Example::

    art.contract = contract                               # e.g. from edgetl.evaluate_contract.contract_for
    small = prune(art, PruneConfig(ratio=0.3), data=load_inputs("tiles/", contract=contract))
    small.history[-1].metrics["headline"]                 # {"metric": "miou", "value": 0.97, ...}
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.contract import ModelContract
from edgetl.errors import ConfigError, ModelError
from edgetl.inputs import InputSet
from edgetl.prune.config import PruneConfig, Recover, Recovery
from edgetl.prune.criteria import make_criterion
from edgetl.prune.feeds import InputReference, as_example, call, named_outputs, split_inputs
from edgetl.prune.flops import layer_widths, model_cost
from edgetl.prune.surgery import output_shapes, prune_model
from edgetl.stages import StageContext

__all__ = ["prune_any", "run_outputs"]

HOLDOUT = 0.2  # share of the samples kept aside to measure fidelity (and, in recovery, to keep the best weights)


def run_outputs(model, samples, contract: ModelContract) -> list[dict[str, np.ndarray]]:
    """``model`` on each sample (batch 1, no grad): the outputs by name, as numpy arrays."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [{k: v.detach().float().numpy() for k, v in named_outputs(call(model, as_example(s, contract))).items()}
                    for s in samples]
    finally:
        model.train(was)


def _subset(inputs: InputSet, idx: list[int]) -> InputSet:
    return InputSet(samples=tuple(inputs.samples[i] for i in idx), origin=inputs.origin,
                    labels=None if inputs.labels is None else inputs.labels[idx], label_map=inputs.label_map)


def _recovery(artifact: Artifact, config: PruneConfig, ctx: StageContext, recover: Recover | None) -> Recover | None:
    if recover is not None:
        if config.recover is not None:
            raise ConfigError(f"give a recovery hook (recover=) or config.recover ({config.recover}), not both")
        return recover
    if config.recover is Recovery.FINETUNE:
        raise ConfigError("recovery by fine-tuning trains on labels; a model scored through its contract recovers "
                          "by distillation from the unpruned model (--recover distill)")
    if config.recover is Recovery.DISTILL or config.recover_epochs > 0:
        from edgetl.distill import DistillConfig, recovery_from

        teachers = ctx.teachers or (artifact,)
        if len(teachers) > 1:
            raise ConfigError("label-free recovery distils from one teacher; give one (the unpruned model)")
        cfg = DistillConfig(epochs=max(1, config.recover_epochs), lr=config.recover_lr, seed=config.seed)
        return recovery_from(teachers[0], cfg)
    return None


def _fidelity(reference: list[dict], model, samples, contract: ModelContract) -> tuple[dict, dict]:
    from edgetl.fidelity import compare, headline

    fid = compare(reference, run_outputs(model, samples, contract), contract=contract)
    return fid.to_dict(), headline(fid, contract.task).to_dict()


def _accuracy(model, inputs: InputSet, contract: ModelContract) -> float | None:
    """Top-1 against labels matched by name, for a classification contract with labelled data; else None."""
    from edgetl.contract import Role, Task

    logits = contract.with_role(Role.LOGITS)
    if inputs.labels is None or contract.task != Task.CLASSIFICATION or not logits:
        return None
    o = logits[0]
    preds = [int(np.asarray(r[o.name]).argmax(axis=o.axis("C", -1)).reshape(-1)[0])
             for r in run_outputs(model, inputs.samples, contract)]
    return float(np.mean(np.asarray(preds) == np.asarray(inputs.labels)))


def _check(artifact: Artifact, config: PruneConfig) -> ModelContract:
    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ModelError(f"pruning needs a PyTorch model; this artifact is {artifact.format.value}")
    if artifact.contract is None:
        raise ConfigError("pruning on unlabelled inputs needs the model's contract (artifact.contract; the CLI reads "
                          "it with --input/--role/--task)")
    if config.target_latency_ms is not None:
        raise ConfigError("a latency target prunes a labelled classifier today; give --ratio or --target-flops for "
                          "a model scored through its contract")
    return artifact.contract


def prune_any(artifact: Artifact, config: PruneConfig, inputs: InputSet, *, ctx: StageContext | None = None,
              recover: Recover | None = None) -> Artifact:
    """The pruning stage on any model (see the module doc); ``inputs`` are real samples read against the
    artifact's contract (:func:`edgetl.inputs.load_inputs`)."""
    from edgetl.prune.pruner import search_ratio

    contract = _check(artifact, config)
    ctx = ctx or StageContext()
    start = time.perf_counter()
    with ctx.reporting():
        recover = _recovery(artifact, config, ctx, recover)
        train_idx, held_idx = split_inputs(len(inputs), holdout=HOLDOUT, seed=config.seed)
        train, held = _subset(inputs, train_idx), _subset(inputs, held_idx)
        model = copy.deepcopy(artifact.model).eval()
        arch = artifact.arch or type(artifact.model).__name__
        example = as_example(inputs.samples[0], contract)
        criterion = make_criterion(config.criterion, normalize=config.normalize, composite=config.composite,
                                   seed=config.seed, batch_size=config.batch_size)
        reference = InputReference.from_inputs(train.samples, contract, limit=config.reference_samples)
        base, widths_before, shapes = model_cost(model, example=example), layer_widths(model), output_shapes(model,
                                                                                                           example)
        source_out = run_outputs(model, held.samples, contract)
        acc_before = _accuracy(model, held, contract)
        scoring = [criterion.prepare(model, reference if criterion.needs_data else None)]
        ratio = config.ratio
        if ratio is None:
            ratio = search_ratio(model, example, criterion, config, base, arch,
                                 cost=lambda m: model_cost(m, example=example))
        current, steps, capped, initial = _steps(artifact, config, model, example, criterion, reference, ratio,
                                                 train, arch, recover, scoring, (source_out, held))
    after = model_cost(model, example=example)
    fidelity, head = _fidelity(source_out, model, held.samples, contract)
    metrics: dict[str, Any] = {
        "criterion": config.criterion, "ratio": round(ratio, 4), "task": contract.task.value,
        "params_before": base.params, "params_after": after.params, "flops_before": base.flops,
        "flops_after": after.flops, "macs_before": base.macs, "macs_after": after.macs,
        "bytes_before": base.bytes, "bytes_after": after.bytes,
        "params_reduction": 1.0 - after.params / base.params,
        "flops_reduction": 1.0 - after.flops / base.flops if base.flops else 0.0,
        "headline": head, "fidelity": fidelity,
        "fidelity_samples": len(held), "fidelity_on": "held-out samples" if len(inputs) > 1 else
        "the only sample, which also scored the channels",
        "reference_samples": len(reference), "metric_outputs": [o.name for o in contract.metric_outputs()],
        "output_shapes": {k: list(v) for k, v in shapes.items()},
        "prunable_channels_before": sum((initial or {}).values()), "capped_layers": sorted(capped),
        "steps": steps, "scoring": scoring, "widths_before": widths_before, "widths_after": layer_widths(model),
    }
    if acc_before is not None:
        metrics.update(accuracy_before=acc_before, accuracy_after=_accuracy(model, held, contract))
    record = StageRecord("prune", config.to_dict(), metrics, time.perf_counter() - start)
    return current.with_stage(record, model=model.eval())


def _steps(artifact, config, model, example, criterion, reference, ratio, train, arch, recover, scoring, measure):
    """``config.steps`` pruning steps in place, each recovered (label-free) when asked; returns the artifact
    carrying the recovery records, per-step info, capped layers and the original widths."""
    source_out, held = measure
    steps, capped, initial, current = [], set(), None, artifact
    for step in range(1, config.steps + 1):
        if step > 1:
            scoring.append(criterion.prepare(model, reference if criterion.needs_data else None))
        step_ratio = ratio * step / config.steps
        plan = prune_model(model, example, criterion, ratio=step_ratio, config=config, initial=initial, arch=arch)
        capped.update(plan.capped)
        initial = initial or plan.sizes
        info: dict[str, Any] = {"step": step, "ratio": round(step_ratio, 4),
                                "channels_removed": sum(plan.removals.values())}
        if recover is not None:
            info["headline_before_recovery"] = _fidelity(source_out, model, held.samples, artifact.contract)[1]
            current = current.with_stage(StageRecord("prune-step", {"step": step}, {}), model=model)
            recovered = recover(current, train)
            if recovered.model is not model:  # keep the graph's modules: copy weights back
                model.load_state_dict(recovered.model.state_dict())
            current = dataclasses.replace(current, history=list(recovered.history))
            info["headline_after_recovery"] = _fidelity(source_out, model, held.samples, artifact.contract)[1]
        steps.append(info)
    return current, steps, capped, initial
