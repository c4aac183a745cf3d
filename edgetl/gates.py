"""Quality gates: a stage's output is measured against its input, and an output past its budget is not shipped.

Every stage has a default budget, in points of top-1 accuracy lost against the stage's input on the same split
(1.0 = one percentage point):

=========  ======  =========================================================================================
stage      budget  why this default
=========  ======  =========================================================================================
quantize   1.0     int8 PTQ with good calibration loses well under a point on CNNs (published: 0.1-0.7)
prune      2.0     after recovery; structured pruning trades a little accuracy for real speed
distill    2.0     a student against its teacher
export     0.5     a format conversion should compute the same thing; parity checks it more finely
=========  ======  =========================================================================================

A recipe sets its own with ``budgets: {quantize: 0.5, ...}``; the CLI with ``--max-drop``. ``--allow-drop``
(``allow_drop=True``) ships an output past its budget anyway: the verdict then says ``allowed`` and keeps the
numbers, and reports list it under warnings.

A pruned model whose accuracy falls near chance has *collapsed* (:func:`collapse`): recovery rarely brings it
back, and the verdict names the highest ratio tried that stayed above the floor.

Example::

    v = check("quantize", before=0.92, after=0.61, agreement=0.64, split="val", samples=270)
    v.passed, v.line()       # False, "quantize lost 31.00 points (92.00 % -> 61.00 %, val, 270 images) ..."
    enforce(v)               # raises BudgetError with that line (and v as its .verdict)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgetl.errors import BudgetError, ConfigError, UnknownNameError

__all__ = ["COLLAPSE_MARGIN", "DEFAULT_BUDGETS", "FIXES", "Collapse", "Verdict", "budget_for",
           "check", "check_series", "collapse", "enforce", "gate_error", "prune_points"]

DEFAULT_BUDGETS: dict[str, float] = {"quantize": 1.0, "prune": 2.0, "distill": 2.0, "export": 0.5}

# The fixes each stage knows, as the CLI option (or recipe key) that applies them; only options that exist.
FIXES: dict[str, tuple[str, ...]] = {
    "quantize": ("keep the most sensitive layers in float: --max-drop N (raise --max-float-layers K for more)",
                 "another calibration: --calibration percentile or mean-minmax, or more --calib-samples",
                 "name layers to keep in float: --keep-float LAYER,..."),
    "prune": ("a lower --ratio (or a larger --target-flops)", "more recovery: --recover-epochs N",
              "iterative pruning: --steps N"),
    "distill": ("more --epochs", "a larger --student"),
    "export": ("another --format for this model", "export from the fp32 model, not a quantized one"),
}

# A model has collapsed when it keeps less than this share of its skill above chance.
COLLAPSE_MARGIN = 0.25


def budget_for(stage: str, override: float | None = None, *, budgets: Mapping[str, float] | None = None) -> float:
    """The budget in points: ``override``, else the recipe's ``budgets[stage]``, else the default."""
    if stage not in DEFAULT_BUDGETS:
        raise UnknownNameError("gated stage", stage, DEFAULT_BUDGETS)
    value = override if override is not None else (budgets or {}).get(stage, DEFAULT_BUDGETS[stage])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 100:
        raise ConfigError(f"the {stage} budget is in accuracy points between 0 and 100, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Verdict:
    """What a gate decided, with the numbers it decided on."""

    stage: str
    passed: bool  # within budget
    allowed: bool  # passed, or shipped anyway with --allow-drop
    before: float  # accuracy of the stage's input
    after: float  # accuracy of its output
    drop_points: float
    budget_points: float
    split: str
    samples: int | None = None
    agreement: float | None = None  # top-1 agreement of output with input
    fixes: tuple[str, ...] = ()
    note: str | None = None  # e.g. what the stage already tried
    metric: str | None = None  # what before/after are when not top-1 accuracy, e.g. "mIoU vs source"

    def line(self) -> str:
        n = f", {self.samples} {'samples' if self.metric else 'images'}" if self.samples else ""
        agree = f", top-1 agreement {100 * self.agreement:.1f} %" if self.agreement is not None else ""
        of = f" of {self.metric}" if self.metric else ""
        head = (f"{self.stage} lost {self.drop_points:.2f} points{of} ({100 * self.before:.2f} % -> "
                f"{100 * self.after:.2f} %, {self.split} split{n}{agree}); budget {self.budget_points:g}")
        if self.passed:
            return head + ": within budget"
        tail = f"{head}: over budget"
        if self.note:
            tail += f" ({self.note})"
        if self.allowed:
            return tail + "; shipped anyway (--allow-drop)"
        return tail + ". Fixes: " + "; ".join(self.fixes) + "; or pass --allow-drop to keep it anyway"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fixes": list(self.fixes), "line": self.line()}


def gate_error(verdict: Verdict) -> BudgetError:
    """The error of a stage whose output is past its budget (``--allow-drop`` not given): a
    :class:`~edgetl.errors.BudgetError` whose ``verdict`` attribute has the numbers (the CLI adds them to its
    ``--json`` error object)."""
    err = BudgetError(verdict.line())
    err.verdict = verdict  # type: ignore[attr-defined]
    return err


def _acc(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= float(v) <= 1.0) or math.isnan(v):
        raise ConfigError(f"{name} must be an accuracy between 0 and 1, got {v!r}")
    return float(v)


def check(stage: str, *, before: float, after: float, agreement: float | None = None, split: str = "val",
          samples: int | None = None, budget: float | None = None, budgets: Mapping[str, float] | None = None,
          allow_drop: bool = False, note: str | None = None, metric: str | None = None) -> Verdict:
    """Judge a stage's output (``after``) against its input (``before``), accuracies in 0..1 (or, with ``metric``
    named, another score in 0..1 such as mIoU against the source model)."""
    b = budget_for(stage, budget, budgets=budgets)
    before, after = _acc("before", before), _acc("after", after)
    drop = round(100 * (before - after), 6)
    passed = drop <= b + 1e-9
    return Verdict(stage=stage, passed=passed, allowed=passed or bool(allow_drop), before=before, after=after,
                   drop_points=drop, budget_points=b, split=split, samples=samples,
                   agreement=None if agreement is None else _acc("agreement", agreement),
                   fixes=FIXES.get(stage, ()), note=note, metric=metric)


def enforce(verdict: Verdict) -> Verdict:
    """Raise :func:`gate_error` unless the verdict lets the output ship."""
    if not verdict.allowed:
        raise gate_error(verdict)
    return verdict


# --------------------------------------------------------------------------- collapse
@dataclass(frozen=True)
class Collapse:
    """Whether pruning took a model to (near) chance, and which ratio tried kept it above the floor."""

    collapsed: bool
    chance: float
    floor: float  # accuracies at or below this count as collapsed
    before: float
    worst: tuple[float, float]  # (ratio, accuracy) of the pruned model judged
    highest_safe_ratio: float | None  # the largest ratio tried whose accuracy stayed above the floor
    points: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    def line(self) -> str:
        ratio, acc = self.worst
        if not self.collapsed:
            return f"pruning at ratio {ratio:g} kept {100 * acc:.2f} % (floor {100 * self.floor:.2f} %)"
        safe = (f"ratio {self.highest_safe_ratio:g} stayed above it" if self.highest_safe_ratio is not None
                else "no ratio tried stayed above it")
        return (f"pruning at ratio {ratio:g} collapsed the model to {100 * acc:.2f} % (chance "
                f"{100 * self.chance:.2f} %, floor {100 * self.floor:.2f} %, before pruning {100 * self.before:.2f} %); "
                f"{safe}: use a lower --ratio, or iterative pruning with recovery (--steps, --recover-epochs)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points": [list(p) for p in self.points], "line": self.line()}


def collapse(points: Iterable[tuple[float, float]], *, before: float, num_classes: int,
             margin: float = COLLAPSE_MARGIN) -> Collapse:
    """Judge the most aggressive of ``points`` ``(ratio, accuracy)``; the floor is chance plus ``margin`` of the
    skill the model had above chance (``before``)."""
    pts = sorted((float(r), _acc("accuracy", a)) for r, a in points)
    if not pts:
        raise ConfigError("collapse needs at least one (ratio, accuracy) point")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    chance = 1.0 / num_classes
    before = _acc("before", before)
    floor = chance + margin * max(before - chance, 0.0)
    safe = [r for r, a in pts if a > floor]
    worst = pts[-1]
    return Collapse(collapsed=worst[1] <= floor, chance=chance, floor=floor, before=before, worst=worst,
                    highest_safe_ratio=max(safe) if safe else None, points=tuple(pts))


def prune_points(metrics: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``(ratio, val accuracy)`` points from a prune record: each step's accuracy after its recovery where
    recovery ran, else the final accuracy at the final ratio (before any recovery)."""
    pts = [(float(s["ratio"]), float(s["val_accuracy_after_recovery"])) for s in metrics.get("steps", ())
           if s.get("val_accuracy_after_recovery") is not None]
    final = metrics.get("val_accuracy_after")
    if not pts and final is not None:
        pts = [(float(metrics["ratio"]), float(final))]
    return pts


def check_series(verdicts: Sequence[Verdict]) -> list[str]:
    """The warning lines of a run's verdicts: every budget missed, shipped anyway or not."""
    return [v.line() for v in verdicts if not v.passed]
