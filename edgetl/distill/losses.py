"""Distillation losses: soft targets with temperature (Hinton et al. 2015) and feature hints (FitNets).

``kd_loss`` mixes the teacher's softened distribution with the hard labels::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The ``T^2`` factor keeps the soft-target gradients at the scale of the hard-label ones whatever ``T`` is, so
``alpha`` means the same thing at every temperature. Without labels (unlabeled data) only the soft part is used.

``FeatureHints`` adds an MSE between chosen intermediate layers, through a learned 1x1 adapter where the widths
differ (a pruned student has fewer channels than its teacher).

Example::

    loss = kd_loss(student(x), teacher(x), y, temperature=4.0, alpha=0.9)
    hints = FeatureHints(student, teacher, [("features.3", "_blocks.5")], example=x)
    loss = loss + 0.5 * hints.loss()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetl.errors import ConfigError, ModelError, UnknownNameError

__all__ = ["FeatureHints", "kd_loss", "kd_loss_from_probs", "parse_feature_pairs", "soft_targets"]


def _check_hyper(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; typical values are 2..8")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha (weight of the soft-target loss) must lie in 0..1, got {alpha}")


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's class distribution softened by ``temperature``."""
    return F.softmax(teacher_logits.detach().float() / temperature, dim=-1)


def kd_loss_from_probs(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """:func:`kd_loss` against a given target distribution (e.g. a weighted mixture of several teachers)."""
    _check_hyper(temperature, alpha)
    if student_logits.shape != teacher_probs.shape:
        raise ModelError(f"student outputs {tuple(student_logits.shape)} but teacher targets are "
                         f"{tuple(teacher_probs.shape)}; both must have one column per class")
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    soft = F.kl_div(log_p, teacher_probs.detach(), reduction="batchmean") * (temperature**2)
    if labels is None or alpha == 1.0:
        # Unlabeled data: the teacher is the only supervision, whatever alpha says.
        return soft
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * soft + (1.0 - alpha) * hard


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Soft-target distillation loss, optionally mixed with hard-label cross-entropy (``1 - alpha``).

    Example::

        kd_loss(s, t, y, temperature=4.0, alpha=0.9)   # labelled
        kd_loss(s, t, temperature=4.0)                 # unlabeled: teacher only
    """
    _check_hyper(temperature, alpha)
    return kd_loss_from_probs(student_logits, soft_targets(teacher_logits, temperature), labels,
                              temperature=temperature, alpha=alpha)


def parse_feature_pairs(text: str | Sequence[str] | Sequence[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """``"s_layer:t_layer,s2:t2"`` (or a list of such strings or tuples) -> ``(("s_layer", "t_layer"), ...)``."""
    if not text:
        return ()
    items: list[Any] = text.split(",") if isinstance(text, str) else list(text)
    pairs = []
    for item in items:
        if isinstance(item, str):
            s, sep, t = item.strip().partition(":")
            if not sep or not s.strip() or not t.strip():
                raise ConfigError(f"feature pair {item!r} must read STUDENT_LAYER:TEACHER_LAYER, e.g. "
                                  "'features.3:_blocks.5'")
            pairs.append((s.strip(), t.strip()))
        else:
            s, t = item
            pairs.append((str(s), str(t)))
    return tuple(pairs)


class _Capture:
    """Keeps the latest output of one module (a forward hook)."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output


def _module(model: nn.Module, name: str, role: str) -> nn.Module:
    names = dict(model.named_modules())
    if name not in names or name == "":
        raise UnknownNameError(f"{role} layer", name, [n for n in names if n],
                               hint="Layer names are those of model.named_modules().")
    return names[name]


def _adapter(s_shape: torch.Size, t_shape: torch.Size, pair: tuple[str, str]) -> nn.Module:
    if len(s_shape) != len(t_shape) or len(s_shape) not in (2, 4):
        raise ModelError(f"feature pair {pair[0]}:{pair[1]} has outputs {tuple(s_shape)} and {tuple(t_shape)}; "
                         "pair two conv maps (N,C,H,W) or two vectors (N,C)")
    cs, ct = s_shape[1], t_shape[1]
    if cs == ct:
        return nn.Identity()
    return nn.Conv2d(cs, ct, kernel_size=1, bias=False) if len(s_shape) == 4 else nn.Linear(cs, ct, bias=False)


class FeatureHints(nn.Module):
    """MSE between chosen student and teacher layer outputs, with a learned adapter where widths differ.

    The adapters are parameters of this module: train them with the student (``hints.parameters()``).
    Spatial sizes are matched by average pooling the larger map down to the smaller one.

    Example::

        hints = FeatureHints(student, teacher, [("layer3", "_blocks.10")], example=x)
        student(x); teacher(x)
        hints.loss()     # mean over pairs
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Sequence[tuple[str, str]], *,
                 example: torch.Tensor, teacher_example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pairs = tuple((str(s), str(t)) for s, t in pairs)
        if not self.pairs:
            raise ConfigError("FeatureHints needs at least one (student_layer, teacher_layer) pair")
        self._s = [_Capture(_module(student, s, "student")) for s, _ in self.pairs]
        self._t = [_Capture(_module(teacher, t, "teacher")) for _, t in self.pairs]
        was = student.training, teacher.training
        student.eval()
        teacher.eval()
        with torch.no_grad():
            student(example[:1])
            teacher((teacher_example if teacher_example is not None else example)[:1])
        student.train(was[0])
        teacher.train(was[1])
        self.adapters = nn.ModuleList(
            _adapter(cs.value.shape, ct.value.shape, p) for cs, ct, p in zip(self._s, self._t, self.pairs, strict=True)
        )
        self.clear()

    def clear(self) -> None:
        for c in (*self._s, *self._t):
            c.value = None

    def remove(self) -> None:
        """Detach the hooks from both models."""
        for c in (*self._s, *self._t):
            c.handle.remove()

    def loss(self) -> torch.Tensor:
        """Mean over pairs of the MSE between adapted student features and (detached) teacher features."""
        total = None
        for (s, t), cs, ct, adapt in zip(self.pairs, self._s, self._t, self.adapters, strict=True):
            if cs.value is None or ct.value is None:
                raise ModelError(f"feature pair {s}:{t} saw no forward pass; run student and teacher first")
            fs, ft = adapt(cs.value), ct.value.detach()
            if fs.dim() == 4 and fs.shape[2:] != ft.shape[2:]:
                h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
                fs, ft = F.adaptive_avg_pool2d(fs, (h, w)), F.adaptive_avg_pool2d(ft, (h, w))
            term = F.mse_loss(fs.float(), ft.float())
            total = term if total is None else total + term
        self.clear()
        return total / len(self.pairs)
