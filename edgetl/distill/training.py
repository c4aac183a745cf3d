"""The distillation loop: optimizer and cosine schedule, resume from the checkpoint, one epoch of sharded steps
against the teachers' soft targets, early stopping with the best weights kept, and the final metrics."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from edgetl.artifact import Artifact, Format, InputSpec, StageRecord
from edgetl.data import DataSplits, prepare
from edgetl.distill.bank import TeacherBank
from edgetl.distill.config import DistillConfig, Optimizer, Views
from edgetl.distill.losses import FeatureHints, kd_loss_from_probs
from edgetl.distill.state import STATE_KIND, STATE_VERSION, cpu_state, fingerprint, load_state, rng_states
from edgetl.distill.students import count_flops
from edgetl.distill.teachers import Teacher, agreement_weights
from edgetl.distill.world import (
    Inputs,
    World,
    average_grads,
    evaluate,
    global_batches,
    raw,
    shard,
    steps_per_epoch,
    wrap,
)
from edgetl.errors import ConfigError
from edgetl.fileio import atomic_path, write_json
from edgetl.progress import task
from edgetl.train import _set_frozen_bn_eval, random_shift

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


@dataclass
class _Progress:
    """What the checkpoint carries besides the weights: where the run stands."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    done_epochs: int = 0
    finished: bool = False
    resumed_from: int | None = None
    train_loss: float = 0.0
    rank_samples: int = 0


class Trainer:
    """One distillation run of ``student`` (an artifact already built for the data's classes)."""

    def __init__(self, stud_art: Artifact, tlist: list[Teacher], data: DataSplits, cfg: DistillConfig,
                 world: World, spec: InputSpec, start: float) -> None:
        self.stud_art, self.data, self.cfg, self.world, self.spec, self.start = stud_art, data, cfg, world, spec, start
        self.student = stud_art.model.to(world.device)
        # Copies: moving a caller's teacher to another device or mode must not change their artifact.
        self.teachers = [Teacher(dataclasses.replace(t.artifact, model=copy.deepcopy(t.model).to(world.device).eval()),
                                 t.weight, t.class_map) for t in tlist]
        for t in self.teachers:
            for p in t.model.parameters():
                p.requires_grad_(False)
        self.bank, self.agreement = self._bank()
        self.hints = self._hints()
        params = list(self.student.parameters()) + (list(self.hints.parameters()) if self.hints is not None else [])
        for p in params:
            p.requires_grad_(True)
        if cfg.optimizer is Optimizer.SGD:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = steps_per_epoch(len(data.train), cfg.batch_size, world.size)
        total_steps = max(self.steps * cfg.total_epochs, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.fingerprint = fingerprint(cfg, self.student, self.teachers, data)
        self.p = _Progress()

    def _bank(self) -> tuple[TeacherBank, list[float] | None]:
        tlist, k = self.teachers, len(self.data.classes)
        bank = TeacherBank(tlist, len(self.data.train), k, self.world.device)
        agreement: list[float] | None = None
        if len(tlist) > 1 and any(t.weight is None for t in tlist):
            agreement = bank.agreement(self.data.train, self.world)
            bank.weights = agreement_weights(agreement, k)
        elif len(tlist) > 1:
            total = sum(float(t.weight) for t in tlist)  # type: ignore[arg-type]
            bank.weights = [float(t.weight) / total for t in tlist]  # type: ignore[arg-type]
        else:
            bank.weights = [1.0]
        return bank, agreement

    def _hints(self) -> FeatureHints | None:
        if not self.cfg.feature_pairs:
            return None
        first = raw(self.data.train.images[:1])
        teacher = self.teachers[0]
        return FeatureHints(self.student, teacher.model, self.cfg.feature_pairs,
                            example=prepare(first, self.spec).to(self.world.device),
                            teacher_example=prepare(first, teacher.artifact.input_spec).to(self.world.device)
                            ).to(self.world.device)

    # ------------------------------------------------------------------ state
    def resume(self) -> None:
        cfg, p = self.cfg, self.p
        if cfg.resume and cfg.checkpoint is not None and cfg.checkpoint.exists():
            state = load_state(cfg.checkpoint)
            if state.get("fingerprint") != self.fingerprint:
                raise ConfigError(f"{cfg.checkpoint} was written by a run with other settings, student, teachers or "
                                  "data; rerun with the same ones, or without --resume to start over")
            self.student.load_state_dict(state["student"])
            if self.hints is not None:
                self.hints.load_state_dict(state["hints"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            self.gen.set_state(state["rng"]["augment"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state(state["rng"]["cuda"])
            p.history = json.loads(state["history_json"])
            p.best_acc, p.best_epoch, p.stale = float(state["best_acc"]), int(state["best_epoch"]), int(state["stale"])
            p.best_state = state["best_state"]
            p.done_epochs, p.finished = int(state["epoch"]), bool(state["finished"])
            p.resumed_from = p.done_epochs
            log.info("resuming %s after epoch %d", cfg.checkpoint, p.done_epochs)
        elif cfg.resume:
            log.warning("nothing to resume at %s; starting from the beginning", cfg.checkpoint)
        if not p.history:
            base = evaluate(self.student, self.data.val, self.spec, self.world)
            p.history.append({"epoch": 0, "val_accuracy": base["accuracy"], "val_loss": base["loss"]})
            p.best_acc, p.best_state = base["accuracy"], cpu_state(self.student)

    def save(self, epoch: int, finished: bool) -> None:
        if not self.world.main:
            return
        cfg, p = self.cfg, self.p
        if cfg.checkpoint is not None:
            payload = {
                "kind": STATE_KIND, "version": STATE_VERSION, "fingerprint": self.fingerprint, "epoch": epoch,
                "finished": finished, "student": cpu_state(self.student),
                "hints": cpu_state(self.hints) if self.hints is not None else {}, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": rng_states(self.gen),
                "history_json": json.dumps(p.history), "best_acc": p.best_acc, "best_epoch": p.best_epoch,
                "best_state": p.best_state, "stale": p.stale,
            }
            with atomic_path(cfg.checkpoint) as tmp:
                torch.save(payload, tmp)
        if cfg.history_path is not None:
            write_json(cfg.history_path, {"epochs": p.history, "best_epoch": p.best_epoch,
                                          "best_val_accuracy": p.best_acc})

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        cfg, p, world = self.cfg, self.p, self.world
        ddp, phase_now = None, "unset"
        bar_ctx = task("distill", self.steps * (cfg.total_epochs - p.done_epochs)) if world.main \
            else contextlib.nullcontext()
        with bar_ctx as bar:
            for epoch in range(p.done_epochs + 1, cfg.total_epochs + 1):
                if p.finished:
                    break
                phase = cfg.phase(epoch)
                if phase != phase_now or ddp is None:
                    _trainable(self.student, phase)
                    if self.hints is not None:
                        for prm in self.hints.parameters():
                            prm.requires_grad_(phase is None)
                    ddp = wrap(self.student, world)
                    phase_now = phase
                if cfg.stable_forward:
                    self.student.eval()
                else:
                    self.student.train()
                    _set_frozen_bn_eval(self.student)
                self._epoch(ddp, epoch, phase, bar)
                stop = cfg.patience is not None and p.stale >= cfg.patience
                p.finished = stop or epoch == cfg.total_epochs
                self.save(epoch, p.finished)
                p.done_epochs = epoch
                if stop:
                    log.info("early stop after epoch %d: no better validation accuracy for %d epochs", epoch, p.stale)
                    break

    def _epoch(self, ddp, epoch: int, phase: float | None, bar) -> None:
        cfg, p, world, train = self.cfg, self.p, self.world, self.data.train
        run_loss, seen = 0.0, 0
        for gidx in global_batches(len(train), cfg.batch_size, cfg.seed * 1000 + epoch, world.size):
            images = raw(train.images[gidx])
            if cfg.views is not Views.ORIGINAL and cfg.shift > 0:
                shifted = random_shift(images, cfg.shift, generator=self.gen)  # drawn for the global batch: rank-free
            else:
                shifted = images
            mine = shard(torch.arange(len(gidx)), world.rank, world.size)
            idx, y = gidx[mine], train.labels[gidx[mine]].to(world.device)
            loss = self._step_loss(ddp, idx, images[mine], shifted[mine], y)
            # Each rank's mean is rescaled so that DDP's average of the ranks is the global batch's mean.
            loss_scaled = loss * (len(mine) * world.size / len(gidx))
            self.opt.zero_grad(set_to_none=True)
            loss_scaled.backward()
            if self.hints is not None and world.size > 1:
                average_grads(self.hints.parameters(), world)
            self.opt.step()
            self.sched.step()
            run_loss += float(loss.detach()) * len(mine)
            seen += len(mine)
            if bar is not None:
                bar.advance(1, epoch=epoch, loss=run_loss / seen, val_acc=p.history[-1]["val_accuracy"])
        totals = torch.tensor([run_loss, float(seen)], dtype=torch.float64)
        stats = world.all_sum(totals.to(world.device) if world.device.type == "cuda" else totals).cpu()
        p.train_loss = float(stats[0]) / max(float(stats[1]), 1.0)
        p.rank_samples = seen
        val = evaluate(self.student, self.data.val, self.spec, world)
        p.history.append({"epoch": epoch, "phase": "main" if phase is None else f"unfreeze {phase:g}",
                          "train_loss": p.train_loss, "train_samples": int(stats[1]),
                          "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                          "lr": self.sched.get_last_lr()[0], "seconds": round(time.perf_counter() - self.start, 2)})
        if val["accuracy"] > p.best_acc:
            p.best_acc, p.best_epoch, p.best_state, p.stale = val["accuracy"], epoch, cpu_state(self.student), 0
        else:
            p.stale += 1

    def _step_loss(self, ddp, idx: torch.Tensor, images: torch.Tensor, shifted: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        """The loss of one rank's shard: the chosen views through student and teachers."""
        cfg, bank, device = self.cfg, self.bank, self.world.device
        views = []
        if cfg.views in (Views.ORIGINAL, Views.BOTH):
            views.append(("original", images))
        if cfg.views in (Views.AUGMENTED, Views.BOTH):
            views.append(("augmented", shifted))
        inputs = Inputs(torch.cat([v for _, v in views]), device)
        if self.hints is None:
            parts = []
            for name, v in views:
                if name == "original":
                    parts.append(bank.original_logits(idx, Inputs(v, device)))
                else:
                    parts.append(torch.stack(bank.logits(Inputs(v, device))))
            t_logits = list(torch.cat(parts, dim=1))
        else:
            t_logits = bank.logits(inputs)  # one teacher, its hooks capture the hint features
        targets = bank.targets(t_logits, cfg.temperature)
        s_logits = ddp(inputs(self.spec))
        labels = y.repeat(len(views)) if cfg.alpha < 1.0 else None
        loss = kd_loss_from_probs(s_logits, targets, labels, temperature=cfg.temperature, alpha=cfg.alpha)
        if self.hints is not None and cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * self.hints.loss()
        return loss

    # ------------------------------------------------------------------ result
    def result(self) -> Artifact:
        """The student with the best validation weights, one ``distill`` record further on."""
        cfg, p, world, data, spec = self.cfg, self.p, self.world, self.data, self.spec
        if self.hints is not None:
            self.hints.remove()
        student = self.student
        if p.best_state is not None:
            student.load_state_dict(p.best_state)
        for prm in student.parameters():
            prm.requires_grad_(True)
        student.eval()
        val = evaluate(student, data.val, spec, world)
        test = evaluate(student, data.test, spec, world) if len(data.test) else None
        t0 = self.teachers[0]
        teacher_test = (evaluate(t0.model, data.test, t0.artifact.input_spec, world, map_fn=t0.mapped)
                        if len(data.test) else None)
        student = student.cpu()
        metrics: dict[str, Any] = {
            "val_accuracy": val["accuracy"],
            "test_accuracy": test["accuracy"] if test else None,
            "accuracy": test["accuracy"] if test else val["accuracy"],
            "teacher_test_accuracy": teacher_test["accuracy"] if teacher_test else None,
            "best_epoch": p.best_epoch,
            "epochs_run": p.done_epochs,
            "resumed_from_epoch": p.resumed_from,
            "teacher_weights": self.bank.weights,
            "teacher_agreement": self.agreement,
            "params": sum(prm.numel() for prm in student.parameters()),
            "flops": count_flops(student, spec.batch_shape(1)),
            "world_size": world.size,
            "rank_samples_last_epoch": p.rank_samples,  # this rank's shard: about 1/world_size of the epoch
            "history": p.history,
        }
        stud_art = self.stud_art
        record = StageRecord(stage="distill", options={**cfg.options(), "data": data.name, "split_seed": data.seed,
                                                       "teachers": [t.artifact.name for t in self.teachers],
                                                       "student": stud_art.name},
                             metrics=metrics, seconds=time.perf_counter() - self.start)
        return Artifact(format=Format.TORCH, model=student, input_spec=spec, labels=tuple(str(c) for c in data.classes),
                        arch=stud_art.arch, history=[*stud_art.history, record],
                        extra={**stud_art.extra, "data": data.name})


def _trainable(model: nn.Module, fraction: float | None) -> None:
    """All parameters (main phase) or the head plus ``fraction`` of the trunk from the output side."""
    if fraction is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    from edgetl.finetune import _set_trainable
    from edgetl.models import classifier_layer

    _set_trainable(model, classifier_layer(model)[0], fraction)
