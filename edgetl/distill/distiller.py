"""Knowledge distillation of a student from one or more teachers, on one process or many (torchrun).

``distill(artifact, config, *, data, ctx=None) -> Artifact`` trains the student on the training split against
the teachers' softened outputs (plus the labels, weighted ``1 - alpha``, and optional feature hints), with
AdamW or SGD under a cosine schedule, early stopping on validation accuracy and the best weights kept.

* **Student and teachers**: with ``config.student`` (a zoo name such as ``edgetl_tinycnn``,
  ``mobilenet_v3_small``, ``resnet18``, built for the data's classes, or a model file) that student is trained
  and the teachers are ``ctx.teachers``, else the input ``artifact``. Without it the input artifact is the
  student (e.g. a pruned model: distillation as pruning recovery) and ``ctx.teachers`` must name the teachers.
  The student's input spec is the (first) teacher's.
* **Views**: each step can see the original images, randomly shifted copies, or both (``Views.BOTH``: the
  lightweight-CNN recipe of training on original plus augmented views). ``unfreeze`` adds progressive
  unfreezing phases at the end (head only first, then more of the trunk from the output side).
* **Resume**: with ``checkpoint`` set, the full training state (student, adapters, optimizer, scheduler,
  epoch, RNG states, best weights, history) is written atomically after every epoch; ``resume=True``
  continues from it: the same run, not a restart. It is loaded with ``weights_only=True``. A context with a
  ``work_dir`` keeps the checkpoint there and resumes from it.
* **Scale-out**: run the same program under ``torchrun --nproc_per_node=N``: DistributedDataParallel over
  gloo (CPU) or nccl (GPUs); every global batch is split into one shard per rank, gradients are averaged,
  so N processes compute the single-process step (exactly so with ``stable_forward``, since BatchNorm
  statistics are otherwise per rank). Only rank 0 writes files.

Example::

    teacher = load_model("teacher.pt")
    art = distill(teacher, DistillConfig(student="edgetl_tinycnn", epochs=20), data=load_data("mnist5k"))
    art.last_metric("test_accuracy")
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.data import DataSplits, check_classes
from edgetl.distill.config import DistillConfig, Optimizer, Views, resume_path
from edgetl.distill.teachers import resolve_teachers
from edgetl.distill.training import Trainer
from edgetl.distill.world import join_world
from edgetl.errors import ConfigError, DataError, ModelError
from edgetl.inputs import InputSet
from edgetl.stages import StageContext

__all__ = ["DistillConfig", "Optimizer", "Views", "distill", "recovery_from", "resume_path"]

WORK_CHECKPOINT = "checkpoint.pt"


def distill(artifact: Artifact, config: DistillConfig | None = None, *, data: DataSplits | InputSet | None = None,
            ctx: StageContext | None = None) -> Artifact:
    """Distil the teachers into the student on ``data``'s training split; returns the trained student.

    ``data`` an :class:`~edgetl.inputs.InputSet` (unlabelled inputs by name, any model with a contract): the
    student matches the one teacher on every output the contract names, no labels (:mod:`edgetl.distill.outputs`).

    Example::

        art = distill(load_model("teacher.pt"), DistillConfig(student="edgetl_tinycnn", epochs=20), data=splits)
        art = distill(pruned, DistillConfig(epochs=4), data=splits, ctx=StageContext(teachers=(teacher,)))
    """
    cfg = config or DistillConfig()
    ctx = ctx or StageContext()
    if not isinstance(cfg, DistillConfig):
        raise ConfigError(f"distill takes a DistillConfig, got {type(cfg).__name__}")
    if data is None:
        raise ConfigError("distillation trains on data: pass data= (e.g. load_data('mnist5k'))")
    student, teachers = _roles(artifact, cfg, ctx)
    if isinstance(data, InputSet):  # any model, unlabelled inputs by name: match the teacher's outputs
        return _distill_outputs(student, teachers, data, cfg, ctx)
    cfg = _with_work_dir(cfg, ctx)
    start = time.perf_counter()
    if len(data.train) == 0:
        raise DataError(f"dataset {data.name!r} has no training images to distil on")
    if len(data.val) == 0:
        raise DataError(f"dataset {data.name!r} has no validation images; early stopping and best-checkpoint "
                        "keeping need some (give load_data a validation fraction > 0)")
    classes = tuple(str(c) for c in data.classes)
    tlist = resolve_teachers(teachers, classes, weights=cfg.teacher_weights)
    spec = tlist[0].artifact.input_spec
    check_classes(classes, data)
    if cfg.feature_pairs and len(tlist) > 1:
        raise ConfigError("feature pairs name layers of one teacher; use them with a single teacher")
    with ctx.reporting():
        world = join_world(cfg.device)
        try:
            torch.manual_seed(cfg.seed)
            trainer = Trainer(_student(student, spec, classes, cfg), tlist, data, cfg, world, spec, start)
            trainer.resume()
            trainer.train()
            return trainer.result()
        finally:
            if world.owns_group:
                import torch.distributed as dist

                dist.destroy_process_group()


def _distill_outputs(student, teachers, data: InputSet, cfg: DistillConfig, ctx: StageContext) -> Artifact:
    from edgetl.distill.outputs import distill_outputs
    from edgetl.models import load_model

    if not isinstance(student, Artifact):
        if not Path(student).exists():
            raise ConfigError(f"student {student!r}: distilling on unlabelled inputs trains a model you give (a "
                              "pruned model, a model file); a zoo student is built for classes")
        student = load_model(student)
    items = list(teachers)
    if len(items) != 1:
        raise ConfigError(f"label-free distillation learns from one teacher; {len(items)} were given")
    teacher = items[0].artifact if hasattr(items[0], "artifact") else items[0]
    if not isinstance(teacher, Artifact):
        teacher = load_model(teacher)
    with ctx.reporting():
        return distill_outputs(student, teacher, data, cfg)


def _roles(artifact, cfg: DistillConfig, ctx: StageContext) -> tuple[Artifact | str, tuple]:
    """(student, teachers) from the stage's input, ``config.student`` and ``ctx.teachers``."""
    if cfg.student is not None:
        return cfg.student, ctx.teachers or (artifact,)
    if not ctx.teachers:
        raise ConfigError("distillation needs teachers: name a student to train (config student=, e.g. "
                          "'edgetl_tinycnn') to distil this model into it, or pass the teachers "
                          "(ctx=StageContext(teachers=(teacher,))) to train this model from them")
    if not isinstance(artifact, Artifact):
        raise ConfigError(f"the student is the stage's input and must be an artifact, got {type(artifact).__name__}")
    return artifact, ctx.teachers


def _with_work_dir(cfg: DistillConfig, ctx: StageContext) -> DistillConfig:
    """A context's work directory holds the resumable state, unless the config names a checkpoint itself."""
    if ctx.work_dir is None or cfg.checkpoint is not None:
        return cfg
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(cfg, checkpoint=ctx.work_dir / WORK_CHECKPOINT, resume=True)


# --------------------------------------------------------------------------- the student
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


# --------------------------------------------------------------------------- pruning recovery
def recovery_from(teacher, config: DistillConfig | None = None) -> Callable[[Artifact, DataSplits], Artifact]:
    """A recovery step for the pruning stage: distil the unpruned ``teacher`` (one, or a sequence of teachers)
    into the pruned model.

    Example::

        recover = recovery_from(teacher, DistillConfig(epochs=5, views="original"))
        prune(teacher, PruneConfig(...), data=data, recover=recover)
    """
    from edgetl.models import load_model

    items = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    teachers = tuple(t if isinstance(t, Artifact) or not isinstance(t, (str, Path)) else load_model(t) for t in items)
    cfg = config or DistillConfig()
    if cfg.student is not None:
        raise ConfigError("a recovery step trains the pruned model itself; leave the config's student unset")
    ctx = StageContext(teachers=teachers)

    def recover(pruned: Artifact, data: DataSplits) -> Artifact:
        return distill(pruned, cfg, data=data, ctx=ctx)

    return recover
