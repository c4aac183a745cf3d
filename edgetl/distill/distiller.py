"""Knowledge distillation of a student from one or more teachers, on one process or many (torchrun).

``distill(student, teachers, data, config) -> Artifact`` trains the student on the training split against
the teachers' softened outputs (plus the labels, weighted ``1 - alpha``, and optional feature hints), with
AdamW or SGD under a cosine schedule, early stopping on validation accuracy and the best weights kept.

* **Students**: a zoo name (``edgetl_tinycnn``, ``mobilenet_v3_small``, ``resnet18`` ...) built for the data's
  classes, or an artifact (e.g. a pruned teacher: distillation as pruning recovery). The student's input spec
  is the (first) teacher's.
* **Views**: each step can see the original images, randomly shifted copies, or both (``Views.BOTH``: the
  lightweight-CNN recipe of training on original plus augmented views). ``unfreeze`` adds progressive
  unfreezing phases at the end (head only first, then more of the trunk from the output side).
* **Resume**: with ``checkpoint`` set, the full training state (student, adapters, optimizer, scheduler,
  epoch, RNG states, best weights, history) is written atomically after every epoch; ``resume=True``
  continues from it: the same run, not a restart. It is loaded with ``weights_only=True``.
* **Scale-out**: run the same program under ``torchrun --nproc_per_node=N``: DistributedDataParallel over
  gloo (CPU) or nccl (GPUs); every global batch is split into one shard per rank, gradients are averaged,
  so N processes compute the single-process step (exactly so with ``stable_forward``, since BatchNorm
  statistics are otherwise per rank). Only rank 0 writes files.

Example::

    art = distill("edgetl_tinycnn", load_model("teacher.pt"), load_data("mnist5k"), DistillConfig(epochs=20))
    art.last_metric("test_accuracy")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetl.artifact import Artifact, Format, InputSpec, StageRecord
from edgetl.data import DataSplits, ImageSet, check_classes, prepare
from edgetl.distill.losses import FeatureHints, kd_loss_from_probs, parse_feature_pairs
from edgetl.distill.students import count_flops
from edgetl.distill.teachers import Teacher, agreement_weights, resolve_teachers
from edgetl.errors import ConfigError, DataError, InputFileError, ModelError, UnknownNameError
from edgetl.fileio import atomic_path, write_json
from edgetl.progress import task
from edgetl.train import _set_frozen_bn_eval, random_shift

__all__ = ["DistillConfig", "Optimizer", "Views", "distill", "recovery_from", "resume_path"]

log = logging.getLogger(__name__)

STATE_KIND = "edgetl-distill-state"
STATE_VERSION = 1


class Optimizer(str, enum.Enum):
    ADAMW = "adamw"
    SGD = "sgd"  # plain when momentum == 0 (what the multi-process equality test uses)


class Views(str, enum.Enum):
    """Which views of each training image a step sees."""

    ORIGINAL = "original"
    AUGMENTED = "augmented"  # randomly shifted
    BOTH = "both"  # original and shifted: twice the samples per step


def _enum(cls, value, what: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        raise UnknownNameError(what, str(value), [m.value for m in cls]) from None


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run needs besides the models and data.

    ``epochs`` is the main phase; each entry of ``unfreeze`` (fractions of the trunk's parameters, from the
    output side, 0 meaning the head alone) adds ``unfreeze_epochs`` more. ``checkpoint``/``resume`` make
    the run resumable (see the module docstring); ``history_path`` receives the epoch history as JSON.
    """

    epochs: int = 10
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target loss; 1 - alpha goes to the hard labels
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    teacher_weights: tuple[float, ...] | None = None  # None: derived from each teacher's label agreement
    optimizer: Optimizer = Optimizer.ADAMW
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    batch_size: int = 64
    views: Views = Views.BOTH
    shift: float = 0.1  # largest random translation, as a fraction of the image side
    unfreeze: tuple[float, ...] = ()
    unfreeze_epochs: int = 1
    patience: int | None = None  # epochs without a better validation accuracy before stopping
    stable_forward: bool = False  # train with normalisation layers in eval mode (see edgetl.train.fit)
    pretrained: bool = True  # zoo students: start from offline pretrained weights where they exist
    seed: int = 0
    device: str = "auto"  # auto: the local CUDA device when there is one, else CPU
    checkpoint: Path | None = None
    resume: bool = False
    history_path: Path | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "optimizer", _enum(Optimizer, self.optimizer, "optimizer"))
        set_(self, "views", _enum(Views, self.views, "views"))
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


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def _join_world(device: str) -> _World:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else a world of one."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local)
    if size <= 1:
        return _World(device=dev)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return _World(rank=dist.get_rank(), size=dist.get_world_size(), device=dev, owns_group=owns)


# --------------------------------------------------------------------------- data
def _raw(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _global_batches(n: int, batch_size: int, seed: int, world: int) -> Iterator[torch.Tensor]:
    """The epoch's global batches (same on every rank); a final batch too small to give each rank a sample
    is dropped, so that all ranks always step together."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if len(idx) >= world:
            yield idx


def _shard(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    lo, hi = rank * len(idx) // world, (rank + 1) * len(idx) // world
    return idx[lo:hi]


def _steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


class _Inputs:
    """One batch of raw images turned into each model's input, computed once per distinct input spec."""

    def __init__(self, raw: torch.Tensor, device: torch.device) -> None:
        self.raw, self.device, self._cache = raw, device, {}

    def __call__(self, spec: InputSpec) -> torch.Tensor:
        if spec not in self._cache:
            self._cache[spec] = prepare(self.raw, spec).to(self.device, non_blocking=True)
        return self._cache[spec]


@torch.no_grad()
def _evaluate(model: nn.Module, data: ImageSet, spec: InputSpec, world: _World, *, batch_size: int = 256,
              map_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy over ``data``, each rank taking one contiguous shard."""
    was = model.training
    model.eval()
    idx = _shard(torch.arange(len(data)), world.rank, world.size)
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size]
        x = prepare(data.images[j], spec).to(world.device)
        y = data.labels[j].to(world.device)
        out = model(x).float()
        if map_fn is not None:
            out = map_fn(out)
        sums += torch.tensor([float((out.argmax(1) == y).sum()), float(F.cross_entropy(out, y, reduction="sum")),
                              float(len(j))], dtype=torch.float64)
    model.train(was)
    sums = world.all_sum(sums.to(world.device) if world.device.type == "cuda" else sums).cpu()
    n = max(float(sums[2]), 1.0)
    return {"accuracy": float(sums[0]) / n, "loss": float(sums[1]) / n, "samples": int(sums[2])}


# --------------------------------------------------------------------------- models
def _outputs(model: nn.Module, spec: InputSpec, device: torch.device) -> int:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(spec.batch_shape(2), device=device))
    except RuntimeError as e:
        raise ModelError(f"the student cannot take the teacher's input {'x'.join(map(str, spec.shape))} "
                         f"({str(e).splitlines()[0][:200]}); pick a student for this input") from None
    model.train(was)
    return int(out.shape[-1])


def _student(student: Artifact | str, spec: InputSpec, classes: tuple[str, ...], cfg: DistillConfig) -> Artifact:
    from edgetl.models import load_model

    if not isinstance(student, Artifact):
        if Path(student).exists():
            student = load_model(student)
        else:
            return load_model(str(student), num_classes=len(classes), pretrained=cfg.pretrained, labels=list(classes),
                              input_spec=spec)
    if student.format is not Format.TORCH or student.model is None:
        raise ModelError(f"the student must be a PyTorch model, got a {student.format.value} artifact")
    model = copy.deepcopy(student.model)  # the caller's artifact stays as it was
    k = _outputs(model, spec, torch.device("cpu"))
    if k != len(classes):
        raise ModelError(f"the student {student.name} has {k} outputs but the teacher and data have {len(classes)} "
                         "classes; use a student built for these classes (a zoo name builds one)")
    return Artifact(format=Format.TORCH, model=model, input_spec=spec, labels=classes, arch=student.arch,
                    history=list(student.history), extra=dict(student.extra))


def _trainable(model: nn.Module, fraction: float | None) -> None:
    """All parameters (main phase) or the head plus ``fraction`` of the trunk from the output side."""
    if fraction is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    from edgetl.finetune import _set_trainable
    from edgetl.models import classifier_layer

    _set_trainable(model, classifier_layer(model)[0], fraction)


def _fingerprint(cfg: DistillConfig, student: nn.Module, teachers: list[Teacher], data: DataSplits) -> str:
    doc = {
        "options": cfg.training_options(),
        "student": [(k, list(v.shape)) for k, v in student.state_dict().items()],
        "teachers": [(t.artifact.arch, sum(p.numel() for p in t.model.parameters()), t.class_map) for t in teachers],
        "data": [data.name, len(data.train), len(data.val), list(data.classes)],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- teachers
class _TeacherBank:
    """The teachers' mixed soft targets. The un-augmented view's logits are cached per training image
    (teachers are frozen, so they never change) unless the cache would be large (big datasets)."""

    CACHE_BYTES = 256 * 2**20

    def __init__(self, teachers: list[Teacher], n_train: int, k: int, device: torch.device) -> None:
        self.teachers = teachers
        self.weights: list[float] = [1.0 / len(teachers)] * len(teachers)
        size = len(teachers) * n_train * k * 4
        self.cache = torch.zeros(len(teachers), n_train, k, device=device) if size <= self.CACHE_BYTES else None
        self.filled = torch.zeros(n_train, dtype=torch.bool)

    def logits(self, inputs: _Inputs) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.mapped(t.model(inputs(t.artifact.input_spec)).float()) for t in self.teachers]

    def original_logits(self, idx: torch.Tensor, inputs: _Inputs) -> torch.Tensor:
        """``[teachers, n, classes]`` logits of the un-augmented images ``idx`` (given as ``inputs``)."""
        if self.cache is None:
            return torch.stack(self.logits(inputs))
        missing = ~self.filled[idx]
        if bool(missing.any()):
            sub = _Inputs(inputs.raw[missing], inputs.device)
            rows = idx[missing].to(self.cache.device)
            for i, out in enumerate(self.logits(sub)):
                self.cache[i, rows] = out
            self.filled[idx] = True
        return self.cache[:, idx.to(self.cache.device)]

    def targets(self, logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
        return sum(w * F.softmax(lg / temperature, dim=-1) for w, lg in zip(self.weights, logits, strict=True))

    def agreement(self, data: ImageSet, world: _World, batch_size: int = 256) -> list[float]:
        """Each teacher's accuracy on the labelled training split (each rank its shard; filling the cache)."""
        idx = _shard(torch.arange(len(data)), world.rank, world.size)
        correct = torch.zeros(len(self.teachers), dtype=torch.float64)
        with task("teacher agreement", len(idx)) if world.main else contextlib.nullcontext() as bar:
            for i in range(0, len(idx), batch_size):
                j = idx[i : i + batch_size]
                out = self.original_logits(j, _Inputs(_raw(data.images[j]), world.device))
                y = data.labels[j].to(out.device)
                correct += (out.argmax(-1) == y).sum(-1).double().cpu()
                if bar is not None:
                    bar.advance(len(j))
        if world.size > 1:
            correct = world.all_sum(correct.to(world.device)).cpu()
        if self.cache is not None and world.size > 1:  # the other ranks' rows were computed there
            self.filled[:] = False
            self.filled[idx] = True
        return [float(c) / len(data) for c in correct]


# --------------------------------------------------------------------------- state
def _rng_states(gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise InputFileError(f"{path}: unreadable distillation checkpoint ({type(e).__name__}); delete it to "
                             "start over") from None
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise InputFileError(f"{path} is not an edgetl distillation checkpoint; delete it or pick another output")
    return state


# --------------------------------------------------------------------------- the stage
def distill(
    student: Artifact | str,
    teachers: Artifact | str | Path | Teacher | Sequence[Artifact | str | Path | Teacher],
    data: DataSplits,
    config: DistillConfig | None = None,
) -> Artifact:
    """Distil ``teachers`` into ``student`` on ``data``'s training split; returns the trained student.

    Example::

        art = distill("edgetl_tinycnn", "teacher.pt", load_data("mnist5k"), DistillConfig(epochs=20))
    """
    cfg = config or DistillConfig()
    start = time.perf_counter()
    if len(data.train) == 0:
        raise DataError(f"dataset {data.name!r} has no training images to distil on")
    if len(data.val) == 0:
        raise DataError(f"dataset {data.name!r} has no validation images; early stopping and best-checkpoint "
                        "keeping need some (give load_data a validation fraction > 0)")
    classes = tuple(str(c) for c in data.classes)
    tlist = resolve_teachers(teachers, classes, weights=cfg.teacher_weights)
    spec0 = tlist[0].artifact.input_spec
    check_classes(classes, data)
    if cfg.feature_pairs and len(tlist) > 1:
        raise ConfigError("feature pairs name layers of one teacher; use them with a single teacher")
    world = _join_world(cfg.device)
    try:
        return _run(student, tlist, data, cfg, world, spec0, classes, start)
    finally:
        if world.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(student_src, tlist: list[Teacher], data: DataSplits, cfg: DistillConfig, world: _World, spec: InputSpec,
         classes: tuple[str, ...], start: float) -> Artifact:
    torch.manual_seed(cfg.seed)
    stud_art = _student(student_src, spec, classes, cfg)
    student = stud_art.model.to(world.device)
    # Copies: moving a caller's teacher to another device or mode must not change their artifact.
    tlist = [Teacher(dataclasses.replace(t.artifact, model=copy.deepcopy(t.model).to(world.device).eval()),
                     t.weight, t.class_map) for t in tlist]
    for t in tlist:
        for p in t.model.parameters():
            p.requires_grad_(False)
    k = len(classes)
    bank = _TeacherBank(tlist, len(data.train), k, world.device)
    agreement: list[float] | None = None
    if len(tlist) > 1 and any(t.weight is None for t in tlist):
        agreement = bank.agreement(data.train, world)
        bank.weights = agreement_weights(agreement, k)
    elif len(tlist) > 1:
        total = sum(float(t.weight) for t in tlist)  # type: ignore[arg-type]
        bank.weights = [float(t.weight) / total for t in tlist]  # type: ignore[arg-type]
    else:
        bank.weights = [1.0]

    hints = None
    if cfg.feature_pairs:
        probe = prepare(_raw(data.train.images[:1]), spec).to(world.device)
        hints = FeatureHints(student, tlist[0].model, cfg.feature_pairs, example=probe,
                             teacher_example=prepare(_raw(data.train.images[:1]), tlist[0].artifact.input_spec)
                             .to(world.device)).to(world.device)
    params = list(student.parameters()) + (list(hints.parameters()) if hints is not None else [])
    for p in params:
        p.requires_grad_(True)
    if cfg.optimizer is Optimizer.SGD:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = _steps_per_epoch(len(data.train), cfg.batch_size, world.size)
    total_steps = max(steps * cfg.total_epochs, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    fingerprint = _fingerprint(cfg, student, tlist, data)

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, best_state, stale, done_epochs, finished = -1.0, 0, None, 0, 0, False
    resumed_from = None
    if cfg.resume and cfg.checkpoint is not None and cfg.checkpoint.exists():
        state = _load_state(cfg.checkpoint)
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{cfg.checkpoint} was written by a run with other settings, student, teachers or "
                              "data; rerun with the same ones, or without --resume to start over")
        student.load_state_dict(state["student"])
        if hints is not None:
            hints.load_state_dict(state["hints"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["augment"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        history = json.loads(state["history_json"])
        best_acc, best_epoch, stale = float(state["best_acc"]), int(state["best_epoch"]), int(state["stale"])
        best_state = state["best_state"]
        done_epochs, finished = int(state["epoch"]), bool(state["finished"])
        resumed_from = done_epochs
        log.info("resuming %s after epoch %d", cfg.checkpoint, done_epochs)
    elif cfg.resume:
        log.warning("nothing to resume at %s; starting from the beginning", cfg.checkpoint)

    if not history:
        base = _evaluate(student, data.val, spec, world)
        history.append({"epoch": 0, "val_accuracy": base["accuracy"], "val_loss": base["loss"]})
        best_acc, best_state = base["accuracy"], _cpu_state(student)

    def save_state(epoch: int, finished_: bool) -> None:
        if not world.main:
            return
        if cfg.checkpoint is not None:
            payload = {
                "kind": STATE_KIND, "version": STATE_VERSION, "fingerprint": fingerprint, "epoch": epoch,
                "finished": finished_, "student": _cpu_state(student),
                "hints": _cpu_state(hints) if hints is not None else {}, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_states(gen), "history_json": json.dumps(history),
                "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state, "stale": stale,
            }
            with atomic_path(cfg.checkpoint) as tmp:
                torch.save(payload, tmp)
        if cfg.history_path is not None:
            write_json(cfg.history_path, {"epochs": history, "best_epoch": best_epoch,
                                          "best_val_accuracy": best_acc})

    ddp = None
    phase_now: Any = "unset"
    train_loss, rank_samples = 0.0, 0
    progress = task("distill", steps * (cfg.total_epochs - done_epochs)) if world.main else contextlib.nullcontext()
    with progress as bar:
        for epoch in range(done_epochs + 1, cfg.total_epochs + 1):
            if finished:
                break
            phase = cfg.phase(epoch)
            if phase != phase_now or ddp is None:
                _trainable(student, phase)
                if hints is not None:
                    for p in hints.parameters():
                        p.requires_grad_(phase is None)
                ddp = _wrap(student, world)
                phase_now = phase
            if cfg.stable_forward:
                student.eval()
            else:
                student.train()
                _set_frozen_bn_eval(student)
            run_loss, seen = 0.0, 0
            for gidx in _global_batches(len(data.train), cfg.batch_size, cfg.seed * 1000 + epoch, world.size):
                raw = _raw(data.train.images[gidx])
                if cfg.views is not Views.ORIGINAL and cfg.shift > 0:
                    shifted = random_shift(raw, cfg.shift, generator=gen)  # drawn for the global batch: rank-free
                else:
                    shifted = raw
                mine = _shard(torch.arange(len(gidx)), world.rank, world.size)
                idx, y = gidx[mine], data.train.labels[gidx[mine]].to(world.device)
                loss = _step_loss(ddp, student, bank, hints, cfg, spec, idx, raw[mine], shifted[mine], y, world)
                # Each rank's mean is rescaled so that DDP's average of the ranks is the global batch's mean.
                loss_scaled = loss * (len(mine) * world.size / len(gidx))
                opt.zero_grad(set_to_none=True)
                loss_scaled.backward()
                if hints is not None and world.size > 1:
                    _average_grads(hints.parameters(), world)
                opt.step()
                sched.step()
                run_loss += float(loss.detach()) * len(mine)
                seen += len(mine)
                if bar is not None:
                    bar.advance(1, epoch=epoch, loss=run_loss / seen,
                                val_acc=history[-1]["val_accuracy"])
            stats = world.all_sum(torch.tensor([run_loss, float(seen)], dtype=torch.float64, device=world.device)
                                  if world.device.type == "cuda" else torch.tensor([run_loss, float(seen)],
                                                                                    dtype=torch.float64)).cpu()
            train_loss = float(stats[0]) / max(float(stats[1]), 1.0)
            rank_samples = seen
            val = _evaluate(student, data.val, spec, world)
            history.append({"epoch": epoch, "phase": "main" if phase is None else f"unfreeze {phase:g}",
                            "train_loss": train_loss, "train_samples": int(stats[1]),
                            "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                            "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 2)})
            if val["accuracy"] > best_acc:
                best_acc, best_epoch, best_state, stale = val["accuracy"], epoch, _cpu_state(student), 0
            else:
                stale += 1
            stop = cfg.patience is not None and stale >= cfg.patience
            finished = stop or epoch == cfg.total_epochs
            save_state(epoch, finished)
            done_epochs = epoch
            if stop:
                log.info("early stop after epoch %d: no better validation accuracy for %d epochs", epoch, stale)
                break
    if hints is not None:
        hints.remove()
    if best_state is not None:
        student.load_state_dict(best_state)
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    val = _evaluate(student, data.val, spec, world)
    test = _evaluate(student, data.test, spec, world) if len(data.test) else None
    teacher_test = (_evaluate(tlist[0].model, data.test, tlist[0].artifact.input_spec, world,
                              map_fn=tlist[0].mapped) if len(data.test) else None)
    student = student.cpu()
    metrics: dict[str, Any] = {
        "val_accuracy": val["accuracy"],
        "test_accuracy": test["accuracy"] if test else None,
        "accuracy": test["accuracy"] if test else val["accuracy"],
        "teacher_test_accuracy": teacher_test["accuracy"] if teacher_test else None,
        "best_epoch": best_epoch,
        "epochs_run": done_epochs,
        "resumed_from_epoch": resumed_from,
        "teacher_weights": bank.weights,
        "teacher_agreement": agreement,
        "params": sum(p.numel() for p in student.parameters()),
        "flops": count_flops(student, spec.batch_shape(1)),
        "world_size": world.size,
        "rank_samples_last_epoch": rank_samples,  # this rank's shard: about 1/world_size of the epoch
        "history": history,
    }
    record = StageRecord(stage="distill", options={**cfg.options(), "data": data.name, "split_seed": data.seed,
                                                   "teachers": [t.artifact.name for t in tlist],
                                                   "student": stud_art.name},
                         metrics=metrics, seconds=time.perf_counter() - start)
    return Artifact(format=Format.TORCH, model=student, input_spec=spec, labels=classes, arch=stud_art.arch,
                    history=[*stud_art.history, record], extra={**stud_art.extra, "data": data.name})


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _wrap(student: nn.Module, world: _World):
    if world.size <= 1:
        return student
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [world.device.index] if world.device.type == "cuda" else None
    # broadcast_buffers=False: BatchNorm buffers stay per rank (standard DDP); all ranks start equal anyway.
    return DDP(student, device_ids=ids, broadcast_buffers=False)


def _average_grads(params, world: _World) -> None:
    for p in params:
        if p.grad is not None:
            world.all_sum(p.grad)
            p.grad /= world.size


def _step_loss(ddp, student, bank: _TeacherBank, hints, cfg: DistillConfig, spec: InputSpec, idx: torch.Tensor,
               raw: torch.Tensor, shifted: torch.Tensor, y: torch.Tensor, world: _World) -> torch.Tensor:
    """The loss of one rank's shard: the chosen views through student and teachers."""
    views = []
    if cfg.views in (Views.ORIGINAL, Views.BOTH):
        views.append(("original", raw))
    if cfg.views in (Views.AUGMENTED, Views.BOTH):
        views.append(("augmented", shifted))
    xs = torch.cat([v for _, v in views])
    inputs = _Inputs(xs, world.device)
    if hints is None:
        parts = []
        for name, v in views:
            if name == "original":
                parts.append(bank.original_logits(idx, _Inputs(v, world.device)))
            else:
                parts.append(torch.stack(bank.logits(_Inputs(v, world.device))))
        t_logits = list(torch.cat(parts, dim=1))
    else:
        t_logits = bank.logits(inputs)  # one teacher, its hooks capture the hint features
    targets = bank.targets(t_logits, cfg.temperature)
    s_logits = ddp(inputs(spec))
    labels = y.repeat(len(views)) if cfg.alpha < 1.0 else None
    loss = kd_loss_from_probs(s_logits, targets, labels, temperature=cfg.temperature, alpha=cfg.alpha)
    if hints is not None and cfg.feature_weight > 0:
        loss = loss + cfg.feature_weight * hints.loss()
    return loss


def recovery_from(teacher: Artifact | str | Path, config: DistillConfig | None = None
                  ) -> Callable[[Artifact, DataSplits], Artifact]:
    """A recovery step for the pruning stage: distil the unpruned ``teacher`` into the pruned model.

    Example::

        recover = recovery_from(teacher, DistillConfig(epochs=5, views="original"))
        prune(teacher, PruneConfig(...), data=data, recover=recover)
    """
    from edgetl.models import load_model

    base = teacher if isinstance(teacher, Artifact) else load_model(teacher)
    cfg = config or DistillConfig()

    def recover(pruned: Artifact, data: DataSplits) -> Artifact:
        return distill(pruned, base, data, cfg)

    return recover
