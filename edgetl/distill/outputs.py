"""Distillation without labels on any outputs: the student matches the teacher on every output its contract
names (``ModelContract.metric_outputs``), one loss per role, on unlabelled inputs by name.

- **logits, mask, sequence** (a distribution over classes at each position): Hinton's soft-target KL at
  temperature ``T`` over the class axis, times ``T^2``, averaged over samples; over the pixels of a mask or the
  steps of a sequence each class the teacher predicts weighs the same (as in mIoU, and as relevance is seeded in
  :mod:`edgetl.prune.feeds`), or the background (a CTC blank) would be all the student learns.
- **embedding**: ``1 - cosine`` along the feature axis: embeddings are compared by angle, not scale.
- **boxes, scores, other** (regression): mean squared error divided by the teacher output's variance, so a
  head in pixel coordinates and one in probabilities weigh the same; 1.0 is as bad as predicting the mean.

The loss is the mean over the outputs, plus FitNets feature hints between named layers when ``feature_pairs``
asks (one-input models; :class:`~edgetl.distill.losses.FeatureHints`, adapters where a pruned width differs).
Training is AdamW or SGD with a cosine schedule; a held-out share of the
samples keeps the best weights (lowest held-out loss) and measures fidelity against the teacher before and after
(:func:`edgetl.fidelity.compare`, the task's headline metric). One process, one teacher.

Example::

    student = distill(pruned, DistillConfig(epochs=5), data=load_inputs("tiles/", contract=c),
                      ctx=StageContext(teachers=(unpruned,)))
    student.history[-1].metrics["headline_after"]
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.contract import ModelContract, OutputTensor, Role
from edgetl.distill.config import DistillConfig, Optimizer, Views
from edgetl.errors import ConfigError, ModelError
from edgetl.inputs import InputSet
from edgetl.prune.feeds import CATEGORICAL, InputReference, call, named_outputs, split_inputs

__all__ = ["distill_outputs", "output_loss"]

HOLDOUT = 0.2
_CLASS_AXIS = {Role.LOGITS: -1, Role.MASK: 1, Role.SEQUENCE: -1, Role.EMBEDDING: -1}


def _one(o: OutputTensor, s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    if s.shape != t.shape:
        raise ModelError(f"output {o.name!r}: the student gives {list(s.shape)}, the teacher {list(t.shape)}")
    s, t = s.float(), t.detach().float()
    if o.role in CATEGORICAL:
        axis = o.axis("C", _CLASS_AXIS[o.role]) % s.ndim
        log_p = F.log_softmax(s / temperature, dim=axis)
        q = F.softmax(t / temperature, dim=axis)
        kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(axis)
        if o.role is Role.LOGITS:
            return kl.mean() * temperature**2
        # a mask or sequence: positions weighted so that each class the teacher predicts weighs the same
        predicted = t.argmax(axis)
        counts = torch.bincount(predicted.flatten(), minlength=t.shape[axis]).float()
        weights = 1.0 / counts[predicted]
        return (weights * kl).sum() / weights.sum() * temperature**2
    if o.role is Role.EMBEDDING:
        axis = o.axis("C", -1) % s.ndim
        return (1.0 - F.cosine_similarity(s, t, dim=axis)).mean()
    return F.mse_loss(s, t) / (t.var(unbiased=False) + 1e-8)


def output_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                outputs: Sequence[OutputTensor], *, temperature: float = 4.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean over ``outputs`` of each one's loss by role (module doc), and each term by output name."""
    terms = {}
    for o in outputs:
        for side, d in (("student", student), ("teacher", teacher)):
            if o.name not in d:
                raise ModelError(f"the {side} gave no output {o.name!r}; it gave {', '.join(d)}")
        terms[o.name] = _one(o, student[o.name], teacher[o.name], temperature)
    total = sum(terms.values()) / len(terms)
    return total, {k: float(v.detach()) for k, v in terms.items()}


def _views(example: tuple, cfg: DistillConfig, gen: torch.Generator) -> list[tuple]:
    """The original inputs and/or a randomly shifted copy of every image input (float N x C x H x W)."""
    from edgetl.train import random_shift

    views = []
    if cfg.views in (Views.ORIGINAL, Views.BOTH) or cfg.shift == 0:
        views.append(example)
    if cfg.views in (Views.AUGMENTED, Views.BOTH) and cfg.shift > 0:
        views.append(tuple(random_shift(x, cfg.shift, generator=gen) if x.is_floating_point() and x.ndim == 4
                           else x for x in example))
    return views


def _held_loss(student, teacher, reference: InputReference, outputs, cfg: DistillConfig, device) -> float:
    total, n = 0.0, 0
    student.eval()
    with torch.no_grad():
        for example, k in reference.batches(cfg.batch_size):
            ex = tuple(x.to(device) for x in example)
            loss, _ = output_loss(named_outputs(call(student, ex)), named_outputs(call(teacher, ex)), outputs,
                                  temperature=cfg.temperature)
            total, n = total + float(loss) * k, n + k
    return total / max(n, 1)


def _fidelity(teacher, student, samples, contract: ModelContract) -> dict[str, Any]:
    from edgetl.fidelity import compare, headline
    from edgetl.prune.contract_prune import run_outputs

    fid = compare(run_outputs(teacher, samples, contract), run_outputs(student, samples, contract), contract=contract)
    return headline(fid, contract.task).to_dict()


def _optimizer(params, cfg: DistillConfig):
    if cfg.optimizer is Optimizer.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _check(student: Artifact, teacher: Artifact, cfg: DistillConfig) -> ModelContract:
    for what, art in (("student", student), ("teacher", teacher)):
        if art.format is not Format.TORCH or art.model is None:
            raise ModelError(f"the {what} must be a PyTorch model, got a {art.format.value} artifact")
    contract = student.contract or teacher.contract
    if contract is None:
        raise ConfigError("distilling on unlabelled inputs needs the model's contract (artifact.contract; the CLI "
                          "reads it with --input/--role/--task)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("label-free distillation runs in one process; run it without torchrun")
    if cfg.unfreeze:
        raise ConfigError("label-free distillation trains the whole student on the outputs; leave --unfreeze unset")
    if cfg.feature_pairs and len(contract.inputs) != 1:
        raise ConfigError("feature pairs (hint losses) need a model with one input; this one takes "
                          f"{', '.join(contract.input_names)}")
    return contract


def _hints(model, tmodel, cfg: DistillConfig, example: tuple):
    """FitNets hints between the named layers (a learned adapter where widths differ), or None."""
    if not cfg.feature_pairs:
        return None
    from edgetl.distill.losses import FeatureHints

    return FeatureHints(model, tmodel, cfg.feature_pairs, example=example[0]).to(example[0].device)


def distill_outputs(student: Artifact, teacher: Artifact, inputs: InputSet, cfg: DistillConfig) -> Artifact:
    """Train ``student`` to match ``teacher`` on every metric output of the contract (module doc)."""
    from edgetl.distill.world import _device
    from edgetl.prune.flops import count_flops
    from edgetl.train import _set_frozen_bn_eval

    contract = _check(student, teacher, cfg)
    start = time.perf_counter()
    outputs = contract.metric_outputs()
    train_idx, held_idx = split_inputs(len(inputs), holdout=HOLDOUT, seed=cfg.seed)
    train = InputReference.from_inputs([inputs.samples[i] for i in train_idx], contract)
    held = InputReference.from_inputs([inputs.samples[i] for i in held_idx], contract)
    device = _device(cfg.device, 0)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(student.model).to(device)
    tmodel = copy.deepcopy(teacher.model).to(device).eval()
    for p in tmodel.parameters():
        p.requires_grad_(False)
    hints = _hints(model, tmodel, cfg, tuple(x.to(device) for x in train.example()))
    params = list(model.parameters()) + (list(hints.parameters()) if hints is not None else [])
    for p in params:
        p.requires_grad_(True)
    opt = _optimizer(params, cfg)
    steps = math.ceil(len(train) / (cfg.batch_size if train.batchable else 1)) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    head_before = _fidelity(tmodel, model, held.samples, contract)
    best = _held_loss(model, tmodel, held, outputs, cfg, device)
    history = [{"epoch": 0, "held_out_loss": best}]
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, cfg.epochs + 1):
        if cfg.stable_forward:
            model.eval()
        else:
            model.train()
            _set_frozen_bn_eval(model)
        run_loss, seen = 0.0, 0
        for example, k in train.batches(cfg.batch_size):
            for view in _views(tuple(x.to(device) for x in example), cfg, gen):
                with torch.no_grad():
                    target = named_outputs(call(tmodel, view))
                loss, _ = output_loss(named_outputs(call(model, view)), target, outputs, temperature=cfg.temperature)
                if hints is not None and cfg.feature_weight > 0:
                    loss = loss + cfg.feature_weight * hints.loss()  # the forwards above captured both layers
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                run_loss, seen = run_loss + float(loss.detach()) * k, seen + k
            sched.step()
        held_loss = _held_loss(model, tmodel, held, outputs, cfg, device)
        history.append({"epoch": epoch, "train_loss": run_loss / max(seen, 1), "held_out_loss": held_loss,
                        "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 2)})
        if held_loss < best:
            best, best_state, best_epoch, stale = held_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if hints is not None:
        hints.remove()
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    metrics = {
        "task": contract.task.value, "metric_outputs": [o.name for o in outputs], "labels_used": False,
        "feature_pairs": [f"{a}:{b}" for a, b in cfg.feature_pairs],
        "headline_before": head_before, "headline_after": _fidelity(tmodel.cpu(), model, held.samples, contract),
        "held_out_loss_before": history[0]["held_out_loss"], "held_out_loss_after": best,
        "held_out_samples": len(held), "train_samples": len(train), "best_epoch": best_epoch,
        "epochs_run": len(history) - 1, "history": history,
        "params": sum(p.numel() for p in model.parameters()), "flops": count_flops(model, example=held.example()),
    }
    record = StageRecord(stage="distill", options={**cfg.options(), "data": inputs.origin, "teachers": [teacher.name],
                                                   "student": student.name}, metrics=metrics,
                         seconds=time.perf_counter() - start)
    return student.with_stage(record, model=model, contract=contract)
