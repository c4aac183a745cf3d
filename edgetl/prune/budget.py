"""Latency-budgeted channel allocation: keep the most relevance the predicted latency allows.

The idea is the latency-saliency knapsack of hardware-aware pruning (HALP, NeurIPS 22; NetAdapt's per-layer
tables before it), written here from the idea alone: every prunable group (channels coupled by torch-pruning's
dependency graph) may keep one of a few *widths*, the steps of the latency staircase measured on the target
(multiples of 8/16/32 are often faster than their neighbours). Removing the least relevant channels of a group
down to the next width costs relevance (the criterion's scores: LRP by default, any criterion) and saves
predicted latency. Greedily, the step with the least relevance lost per millisecond saved is taken until the
prediction meets the budget; then steps back up are added, most relevance per millisecond first, while the
prediction still fits. Latency is not additive per group (a convolution's cost depends on its input *and*
output widths, owned by two groups), so every step is priced by the model on the current widths of all groups.

The latency model is injected (:class:`LatencyModel`): this module imports no runtime and no benchmark code.

Example::

    alloc = allocate([GroupScores("features.0", scores, min_keep=8)], model, budget_ms=1.5)
    alloc.keep["features.0"], alloc.predicted_ms
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgetl.errors import BudgetError, ConfigError

__all__ = ["Allocation", "GroupScores", "LatencyFit", "LatencyModel", "allocate", "fit_latency", "latency_plan",
           "rescale_change"]


@runtime_checkable
class LatencyModel(Protocol):
    """Predicted latency (ms, p50 at batch 1 on one runtime) of the model at given group widths.

    ``widths`` maps a group's name (its root layer's qualified name, as the pruner names groups) to the channels
    it keeps; groups not named keep all their channels. ``candidates`` are the widths worth keeping for a group
    (ascending, the full width last): the measured staircase, with widths no faster than a wider one removed.
    """

    def candidates(self, group: str) -> Sequence[int]: ...

    def predict_ms(self, widths: Mapping[str, int]) -> float: ...


@dataclass(frozen=True)
class GroupScores:
    """One prunable group: a relevance score per channel unit, the width floor, the channels per unit."""

    name: str
    scores: Sequence[float]
    min_keep: int = 1  # in channels
    unit: int = 1  # channels per score (grouped convolutions score a position shared by every channel group)

    @property
    def channels(self) -> int:
        return len(self.scores) * self.unit


@dataclass
class Allocation:
    """What the allocator chose: channels kept per group and the latency it predicts for them."""

    keep: dict[str, int]
    budget_ms: float
    full_ms: float
    predicted_ms: float
    relevance_kept: float
    relevance_total: float
    feasible: bool
    removal_steps: int = 0
    added_back_steps: int = 0
    floor_ms: float | None = None  # the prediction with every group at its smallest allowed width
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": dict(self.keep), "budget_ms": self.budget_ms, "full_ms": self.full_ms,
                "predicted_ms": self.predicted_ms, "relevance_kept": self.relevance_kept,
                "relevance_total": self.relevance_total, "feasible": self.feasible,
                "removal_steps": self.removal_steps, "added_back_steps": self.added_back_steps,
                "floor_ms": self.floor_ms, "notes": list(self.notes)}


class _Group:
    """Widths a group may take and the relevance it keeps at each (sorted scores, suffix sums)."""

    def __init__(self, g: GroupScores, candidates: Sequence[int]) -> None:
        self.name, self.unit = g.name, g.unit
        scores = sorted(float(s) if math.isfinite(float(s)) else 0.0 for s in g.scores)
        n = len(scores)
        suffix = [0.0] * (n + 1)  # suffix[k]: relevance of the k highest-scored units
        for k in range(1, n + 1):
            suffix[k] = suffix[k - 1] + scores[n - k]
        self.suffix = suffix
        full = g.channels
        widths = {int(w) for w in candidates if g.min_keep <= int(w) <= full and int(w) % g.unit == 0}
        widths.add(full)
        self.widths = sorted(widths)
        self.index = len(self.widths) - 1  # current position: full width

    @property
    def width(self) -> int:
        return self.widths[self.index]

    def relevance(self, width: int) -> float:
        return self.suffix[width // self.unit]


def allocate(groups: Sequence[GroupScores], model: LatencyModel, budget_ms: float, *,
             add_back: bool = True) -> Allocation:
    """Channels each group keeps so that ``model`` predicts at most ``budget_ms``, keeping the most relevance.

    Raises :class:`ConfigError` for a non-positive budget or duplicate group names. When even the smallest
    allowed widths predict more than the budget, the result says ``feasible=False`` (with those widths).
    """
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ConfigError(f"the latency budget must be a positive number of milliseconds, got {budget_ms}")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate group names in the allocation: {sorted({n for n in names if names.count(n) > 1})}")
    state = {g.name: _Group(g, model.candidates(g.name)) for g in groups}
    full_ms = float(model.predict_ms(_widths(state)))
    floor_ms = float(model.predict_ms({n: s.widths[0] for n, s in state.items()}))

    def lost_per_ms_saved(s: _Group, j: int, pred: float, current: float):
        saved = current - pred
        if saved <= 0:  # a staircase may make the next narrower width no faster: try the one after
            return None
        return (s.relevance(s.width) - s.relevance(s.widths[j])) / saved, -saved

    def gain_per_ms_added(s: _Group, j: int, pred: float, current: float):
        gain = s.relevance(s.widths[j]) - s.relevance(s.width)
        if pred > budget_ms or gain <= 0:
            return None
        return -(gain / max(pred - current, 1e-9)), -gain  # the most relevance per ms added ranks first

    current, removals = _greedy(state, model, full_ms, narrower=True, rank=lost_per_ms_saved,
                                until=lambda c: c <= budget_ms)
    added = 0
    if add_back and current <= budget_ms:
        current, added = _greedy(state, model, current, narrower=False, rank=gain_per_ms_added)
    kept = sum(s.relevance(s.width) for s in state.values())
    total = sum(s.suffix[-1] for s in state.values())
    notes = []
    if current > budget_ms:
        notes.append(f"the smallest allowed widths predict {floor_ms:.4g} ms, above the {budget_ms:.4g} ms budget")
    return Allocation(keep={n: s.width for n, s in state.items()}, budget_ms=float(budget_ms), full_ms=full_ms,
                      predicted_ms=current, relevance_kept=kept, relevance_total=total,
                      feasible=current <= budget_ms, removal_steps=removals, added_back_steps=added,
                      floor_ms=floor_ms, notes=notes)


def _widths(state: dict[str, _Group], override: tuple[str, int] | None = None) -> dict[str, int]:
    w = {n: s.width for n, s in state.items()}
    if override is not None:
        w[override[0]] = override[1]
    return w


def _greedy(state: dict[str, _Group], model: LatencyModel, current: float, *, narrower: bool,
            rank: Callable[[_Group, int, float, float], tuple[float, float] | None],
            until: Callable[[float], bool] = lambda _: False) -> tuple[float, int]:
    """Take one-group width steps (narrower or wider), best ``rank`` first, until ``until(prediction)`` or no
    step qualifies; returns the final prediction and the steps taken.

    Per group only the nearest width the rank accepts (not ``None``) is a candidate; the lowest rank wins,
    the first group on ties. Each step is priced by ``model`` on the current widths of all groups.
    """
    steps = 0
    while not until(current):
        best = None  # (rank, name, new index, new prediction)
        for name, s in state.items():
            for j in (range(s.index - 1, -1, -1) if narrower else range(s.index + 1, len(s.widths))):
                pred = float(model.predict_ms(_widths(state, (name, s.widths[j]))))
                key = rank(s, j, pred, current)
                if key is None:
                    continue
                if best is None or key < best[0]:
                    best = (key, name, j, pred)
                break
        if best is None:
            break
        _, name, j, current = best
        state[name].index = j
        steps += 1
    return current, steps


def _min_keep(initial: int, unit: int, max_layer_ratio: float, step: int) -> int:
    """The pruner's floor, in channels: at least 1 - max_layer_ratio of the original and one rounding block."""
    floor = math.ceil(initial * (1.0 - max_layer_ratio))
    if max_layer_ratio < 1.0:
        floor = max(floor, 1, min(step, initial))
    floor = max(floor, 1)
    return math.ceil(floor / unit) * unit


def latency_plan(records: Sequence[Any], config: Any, *, budget_ms: float | None = None):
    """A :class:`~edgetl.prune.pruner.PrunePlan` from the pruner's scored groups and a latency budget.

    ``records`` are the pruner's groups (``name``, ``scores`` per channel position, ``current``, ``initial``,
    ``ch_groups``); ``config`` carries ``target_latency_ms``, ``latency_model``, ``max_layer_ratio`` and
    ``round_to``. Raises :class:`BudgetError` when the budget is out of reach even at the smallest widths.
    """
    from edgetl.prune.pruner import PrunePlan

    model = getattr(config, "latency_model", None)
    budget = float(budget_ms if budget_ms is not None else config.target_latency_ms)
    if model is None:
        raise ConfigError("a latency target needs a latency model (config.latency_model); the CLI builds one "
                          "for --device/--runtime, the Python API takes any object with candidates() and "
                          "predict_ms()")
    step = config.round_to or 1
    groups, units = [], {}
    for r in records:
        unit = int(r.ch_groups)
        units[r.name] = unit
        try:
            model.candidates(r.name)
        except KeyError:
            raise ConfigError(f"the latency model has no entry for layer group {r.name!r}; build it for this "
                              "model (same architecture and widths)") from None
        groups.append(GroupScores(r.name, [float(s) for s in r.scores],
                                  min_keep=_min_keep(r.initial * unit, unit, config.max_layer_ratio, step),
                                  unit=unit))
    alloc = allocate(groups, _Restricted(model, step, {r.name: r.current * units[r.name] for r in records}), budget)
    if not alloc.feasible:
        raise BudgetError(
            f"target latency {budget:.4g} ms is out of reach: the full model predicts {alloc.full_ms:.4g} ms and "
            f"even the smallest widths allowed (max_layer_ratio {config.max_layer_ratio}) predict "
            f"{alloc.floor_ms:.4g} ms. Raise the target, raise --max-layer-ratio, or pick a faster runtime")
    removals = {r.name: r.current - alloc.keep[r.name] // units[r.name] for r in records}
    return PrunePlan(removals=removals, capped=[], sizes={r.name: r.current for r in records},
                     latency=alloc.to_dict())


class _Restricted:
    """The injected model with candidates restricted to the pruner's rounding and the current widths."""

    def __init__(self, model: LatencyModel, step: int, current: Mapping[str, int]) -> None:
        self.model, self.step, self.current = model, step, dict(current)

    def candidates(self, group: str) -> list[int]:
        full = self.current[group]
        return [c for c in self.model.candidates(group) if c <= full and (c % self.step == 0 or c == full)] + [full]

    def predict_ms(self, widths: Mapping[str, int]) -> float:
        return self.model.predict_ms(widths)


@dataclass
class LatencyFit:
    """The outcome of pruning to a measured latency target: what was kept and each iteration's figures."""

    result: Any  # what ``prune_at`` returned for the last iteration
    target_ms: float
    met: bool
    iterations: list[dict[str, float]]

    @property
    def measured_ms(self) -> float:
        return self.iterations[-1]["measured_ms"]

    @property
    def predicted_ms(self) -> float:
        return self.iterations[-1]["predicted_ms"]


def rescale_change(scale: float, base_ms: float, predicted_ms: float, measured_ms: float) -> float:
    """A latency model's new change scale from one measured/predicted pair: the model predicts
    ``base + scale * change``; a pruned model predicted at ``predicted_ms`` measured ``measured_ms``, so the
    scale is multiplied by measured change / predicted change (bounded to 0.25..4 per step, so one noisy
    measurement cannot wreck the model). A predicted or measured change that is not a saving leaves it."""
    pc, mc = predicted_ms - base_ms, measured_ms - base_ms
    if not (math.isfinite(pc) and math.isfinite(mc)) or pc >= 0:
        return scale
    if mc >= 0:  # predicted faster, measured no faster: the savings are much smaller than modelled
        return scale * 0.25
    return scale * min(4.0, max(0.25, mc / pc))


def fit_latency(prune_at: Callable[[float], tuple[Any, float]], measure: Callable[[Any], float], target_ms: float,
                *, max_iterations: int = 4, margin: float = 0.97,
                recalibrate: Callable[[float, float], Any] | None = None) -> LatencyFit:
    """Prune, measure, correct, repeat: until the *measured* latency meets ``target_ms``.

    ``prune_at(budget_ms) -> (result, predicted_ms)`` prunes for a predicted budget; ``measure(result)`` returns
    its measured p50 (ms). The first budget is the target itself. On a miss, with ``recalibrate(predicted,
    measured)`` (the latency model re-fits itself to the measurement, e.g. :func:`rescale_change`) the next
    budget is the target again, times ``margin`` per miss so far (the model now predicts what was measured);
    without it the budget is scaled by ``target / measured`` (times ``margin``, so a near miss does not
    repeat). Never loosens the budget. After ``max_iterations`` misses the result says ``met=False``; the
    caller decides whether that is an error.
    """
    if max_iterations < 1:
        raise ConfigError(f"max_iterations must be at least 1, got {max_iterations}")
    if not math.isfinite(target_ms) or target_ms <= 0:
        raise ConfigError(f"the latency target must be a positive number of milliseconds, got {target_ms}")
    budget, history, result = float(target_ms), [], None
    for i in range(1, max_iterations + 1):
        result, predicted = prune_at(budget)
        measured = float(measure(result))
        history.append({"iteration": i, "budget_ms": budget, "predicted_ms": float(predicted),
                        "measured_ms": measured})
        if measured <= target_ms:
            return LatencyFit(result, float(target_ms), True, history)
        if recalibrate is not None:
            recalibrate(float(predicted), measured)
            budget = min(budget, float(target_ms) * margin ** i)
        else:
            budget = min(budget, budget * target_ms / measured * margin)
    return LatencyFit(result, float(target_ms), False, history)
