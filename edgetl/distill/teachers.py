"""Teachers: one or several models whose softened outputs the student learns from.

Several teachers are mixed into one target distribution, weighted either as given or by each teacher's
agreement with the labels on the distillation set (the weighted multi-source idea of "Distilling from
Similar Tasks": a source that fits the target task better should teach more). A teacher whose classes come
in another order than the data's is used only through an explicit class map, never guessed.

Example::

    t1 = Teacher(load_model("a.pt"))
    t2 = Teacher(load_model("b.pt"), class_map=class_map_by_name(b.labels, data.classes))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError, ModelError

__all__ = ["Teacher", "agreement_weights", "class_map_by_name", "resolve_teachers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    """A teacher model, its optional fixed weight, and an optional class map.

    ``class_map[i]`` is the teacher output index that means the data's class ``i``; with it a teacher may
    order its classes differently, or have more of them (only the mapped outputs are used).
    """

    artifact: Artifact
    weight: float | None = None
    class_map: tuple[int, ...] | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.artifact.model  # type: ignore[return-value]

    def mapped(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits reordered (and restricted) to the data's classes."""
        if self.class_map is None:
            return logits
        return logits.index_select(-1, torch.as_tensor(self.class_map, device=logits.device))


def class_map_by_name(teacher_labels: Sequence[str], data_classes: Sequence[str]) -> tuple[int, ...]:
    """The class map that matches a teacher's outputs to the data's classes by label name.

    Example::

        class_map_by_name(("cat", "dog"), ("dog", "cat"))   # (1, 0)
    """
    index = {str(n): i for i, n in enumerate(teacher_labels)}
    missing = [c for c in data_classes if str(c) not in index]
    if missing:
        raise ModelError(f"the teacher has no output named {missing[:5]} (its labels: {list(teacher_labels)[:10]}); "
                         "cannot match its classes to the data's by name")
    return tuple(index[str(c)] for c in data_classes)


def _as_artifact(source: Artifact | str | Path) -> Artifact:
    if isinstance(source, Artifact):
        return source
    from edgetl.models import load_model

    return load_model(source)


def _check(teacher: Teacher, name: str, classes: tuple[str, ...]) -> Teacher:
    art = teacher.artifact
    if art.format is not Format.TORCH or art.model is None:
        raise ModelError(f"teacher {name} is a {art.format.value} file; distillation needs the PyTorch model "
                         "(the .pt it was exported from)")
    if teacher.weight is not None and not teacher.weight >= 0:
        raise ConfigError(f"teacher {name}: weight must be >= 0, got {teacher.weight}")
    k = len(classes)
    if teacher.class_map is not None:
        cm = tuple(int(i) for i in teacher.class_map)
        if len(cm) != k or min(cm) < 0 or max(cm) >= art.num_classes or len(set(cm)) != k:
            raise ConfigError(f"teacher {name}: class map needs {k} distinct output indices in "
                              f"0..{art.num_classes - 1}, got {list(cm)}")
        return Teacher(art, teacher.weight, cm)
    if tuple(art.labels) == tuple(classes):
        return teacher
    if sorted(art.labels) == sorted(classes):
        raise ModelError(f"teacher {name} orders its classes {list(art.labels)[:10]} differently from the data "
                         f"{list(classes)[:10]}; give a class map (CLI: --align-classes to match by name)")
    if art.num_classes != k:
        raise ModelError(f"teacher {name} has {art.num_classes} outputs but the data has {k} classes; give a "
                         "class map that picks the data's classes from its outputs, or a matching teacher")
    # Same count, uninformative names (e.g. "0".."9" against folder names): position is the only evidence,
    # as everywhere else in edgetl (data.check_classes).
    log.info("teacher %s labels %s differ from the data classes %s; matching by position", name,
             list(art.labels)[:5], list(classes)[:5])
    return teacher


def resolve_teachers(teachers, classes: Sequence[str], *, weights: Sequence[float] | None = None) -> list[Teacher]:
    """Normalise what the user gave (artifacts, paths, :class:`Teacher`) into checked teachers."""
    items = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    if not items:
        raise ConfigError("distillation needs at least one teacher")
    if weights is not None and len(weights) != len(items):
        raise ConfigError(f"{len(weights)} teacher weights given for {len(items)} teachers; give one per teacher")
    out = []
    for i, item in enumerate(items):
        t = item if isinstance(item, Teacher) else Teacher(_as_artifact(item))
        if weights is not None:
            t = Teacher(t.artifact, float(weights[i]), t.class_map)
        name = f"#{i + 1} ({str(item) if isinstance(item, (str, Path)) else t.artifact.name})"
        out.append(_check(t, name, tuple(str(c) for c in classes)))
    given = [t.weight for t in out]
    if any(w is not None for w in given) and not all(w is not None for w in given):
        raise ConfigError("give a weight for every teacher or for none (none: derived from label agreement)")
    if all(w is not None for w in given) and sum(given) <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"teacher weights must not all be zero, got {given}")
    return out


def agreement_weights(accuracies: Sequence[float], num_classes: int) -> list[float]:
    """Teacher weights from their accuracy on the labelled distillation set, normalised to sum 1.

    A teacher counts by how far it is above chance: one at chance level teaches nothing about these labels.
    If none is above chance, all count the same.

    Example::

        agreement_weights([0.9, 0.5], 10)   # [0.667, 0.333]
    """
    chance = 1.0 / max(num_classes, 1)
    margins = [max(float(a) - chance, 0.0) for a in accuracies]
    total = sum(margins)
    if total <= 0:
        return [1.0 / len(margins)] * len(margins)
    return [m / total for m in margins]
