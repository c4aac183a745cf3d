"""Structured pruning: rank channels with a criterion, remove them with torch-pruning's dependency graph.

torch-pruning finds which channels are coupled (residual additions, depthwise convolutions, concatenations) and
performs the surgery, so the result is a genuinely smaller model. edgetl does the ranking itself, on top of the
library's group scores, because it must never fail silently: torch-pruning skips a group that would be emptied
and its per-layer cap does not bind within a step. Here every layer keeps at least
``1 - max_layer_ratio`` of its original channels (and at least one ``round_to`` block), and a plan that would
empty a layer is an error naming it.

Example::

    pruned = prune(teacher, PruneConfig(criterion="lrp", ratio=0.5), data=splits)
    pruned.history[-1].metrics["params_after"], pruned.history[-1].metrics["val_accuracy_after"]
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.data import DataSplits, check_classes
from edgetl.errors import ConfigError, ModelError, UnknownNameError
from edgetl.prune.criteria import CRITERIA, Criterion, Normalization, make_criterion
from edgetl.prune.flops import layer_widths, model_cost
from edgetl.prune.relevance import Composite, reference_set

__all__ = ["LayerFilter", "PruneConfig", "PrunePlan", "Scope", "layers_matching", "prune", "prune_model"]

log = logging.getLogger(__name__)

#: Layer selection, shared by every stage: ``(qualified name, module) -> bool``.
LayerFilter = Callable[[str, Any], bool]
#: Recovery after a pruning step: gets the pruned artifact and the data, returns the recovered artifact.
Recover = Callable[[Artifact, DataSplits], Artifact]


class Scope(str, enum.Enum):
    """Where channels compete: across all layers (global) or within each layer (layerwise)."""

    GLOBAL = "global"
    LAYERWISE = "layerwise"

    def __str__(self) -> str:
        return self.value


def layers_matching(*patterns: str) -> LayerFilter:
    """A layer filter selecting modules whose qualified name matches any shell-style pattern (``features.1*``)."""
    import fnmatch

    def match(name: str, module: Any) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    match.__qualname__ = f"layers_matching{patterns!r}"
    return match


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how far.

    Give one target: ``ratio`` (share of prunable channels removed), ``target_flops`` or ``target_params``
    (fraction of the original cost to *keep*; the ratio is searched). ``steps`` > 1 prunes iteratively with
    the criterion recomputed on the pruned model each step and, with ``recover_epochs``, fine-tuning between.
    """

    criterion: str = "lrp"
    ratio: float | None = 0.5
    target_flops: float | None = None
    target_params: float | None = None
    steps: int = 1
    recover_epochs: int = 0
    recover_lr: float = 1e-3
    samples_per_class: int = 10
    composite: Composite = Composite.EPSILON_PLUS_FLAT
    scope: Scope = Scope.GLOBAL
    normalize: Normalization = Normalization.NONE
    max_layer_ratio: float = 0.9
    round_to: int | None = 8
    ignore: LayerFilter | None = None
    ignore_classifier: bool = True
    seed: int = 0
    batch_size: int = 64
    # Latency target (p50 ms at batch 1 on one runtime): widths chosen by edgetl.prune.budget against an
    # injected latency model (any object with candidates() and predict_ms(); the CLI builds one per device).
    target_latency_ms: float | None = None
    latency_model: Any = None

    def __post_init__(self) -> None:
        if self.criterion.lower() not in CRITERIA:
            raise UnknownNameError("criterion", self.criterion, CRITERIA)
        object.__setattr__(self, "criterion", self.criterion.lower())
        object.__setattr__(self, "composite", Composite.parse(self.composite))
        object.__setattr__(self, "normalize", Normalization.parse(self.normalize))
        if not isinstance(self.scope, Scope):
            try:
                object.__setattr__(self, "scope", Scope(str(self.scope).lower()))
            except ValueError:
                raise UnknownNameError("scope", str(self.scope), [s.value for s in Scope]) from None
        targets = [n for n in ("target_flops", "target_params") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise ConfigError("give one target: target_flops or target_params, not both")
        if self.target_latency_ms is not None:
            self._check_latency_target(targets)
        elif targets:
            object.__setattr__(self, "ratio", None)
            value = getattr(self, targets[0])
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{targets[0]} is the fraction of the original cost to keep and must lie "
                                  f"strictly between 0 and 1, got {value}")
        elif self.ratio is None or not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"pruning ratio must lie strictly between 0 and 1 (share of channels removed), "
                              f"got {self.ratio}")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1], got {self.max_layer_ratio}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.recover_epochs < 0:
            raise ConfigError(f"recover_epochs must be >= 0, got {self.recover_epochs}")
        if self.samples_per_class < 1:
            raise ConfigError(f"samples_per_class must be >= 1, got {self.samples_per_class}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1 (or None), got {self.round_to}")
        if self.ignore is not None and not callable(self.ignore):
            raise ConfigError("ignore must be a layer filter: a callable (name, module) -> bool")

    def _check_latency_target(self, targets: list[str]) -> None:
        if targets:
            raise ConfigError(f"give one target: target_latency_ms or {targets[0]}, not both")
        if not (isinstance(self.target_latency_ms, (int, float)) and 0 < self.target_latency_ms < math.inf):
            raise ConfigError(f"target_latency_ms must be a positive number of milliseconds, got {self.target_latency_ms}")
        if self.steps != 1:
            raise ConfigError("a latency target prunes in one step (steps=1); recover afterwards with recover_epochs")
        if self.latency_model is None or not callable(getattr(self.latency_model, "predict_ms", None)):
            raise ConfigError("target_latency_ms needs a latency model (latency_model=...): an object with "
                              "candidates(group) and predict_ms(widths), e.g. benchmarks.latency_table's")
        object.__setattr__(self, "ratio", None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["ignore"] = None if self.ignore is None else getattr(self.ignore, "__qualname__", repr(self.ignore))
        lm = self.latency_model
        d["latency_model"] = None if lm is None else (lm.describe() if hasattr(lm, "describe") else type(lm).__name__)
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in d.items()}


@dataclass
class _Record:
    name: str
    group: Any
    root: Any
    handler: Any
    scores: Any  # per channel (per channel group position for grouped convolutions)
    ch_groups: int
    initial: int  # channels (per channel group) in the unpruned model

    @property
    def current(self) -> int:
        return len(self.scores)


@dataclass
class PrunePlan:
    """How many channels each group loses in one step, and which layers the cap protected."""

    removals: dict[str, int]
    capped: list[str]
    sizes: dict[str, int]  # channels per group before the step
    latency: dict[str, Any] | None = None  # the latency allocation (edgetl.prune.budget), for a latency target


# --------------------------------------------------------------------------- graph
def _ignored_modules(model, config: PruneConfig) -> list[Any]:
    from edgetl.models import classifier_layer

    ignored = []
    if config.ignore is not None:
        ignored = [m for n, m in model.named_modules() if n and config.ignore(n, m)]
    if config.ignore_classifier:
        try:
            ignored.append(classifier_layer(model)[1])
        except ModelError:
            log.info("no nn.Linear classifier found; nothing ignored by default")
    return ignored


def _build_graph(model, example) -> Any:
    import torch_pruning as tp

    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as e:  # noqa: BLE001 - tracing failures come in every exception type
        raise ModelError(f"torch-pruning cannot trace {type(model).__name__}{_failing_op(e)}: "
                         f"{type(e).__name__}: {e}. Exclude the layers involved with an ignore filter "
                         "(--ignore NAME) or prune another architecture") from None


def _failing_op(error: BaseException) -> str:
    """' at op X (after layer Y)' from the innermost torch-pruning graph node in the traceback, if any."""
    tb, node = error.__traceback__, None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("node")
        if candidate is not None and hasattr(candidate, "grad_fn") and hasattr(candidate, "inputs"):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return ""
    op = type(node.grad_fn).__name__ if node.grad_fn is not None else type(node.module).__name__
    # walk back to the nearest named layer so the user knows where in the model the op sits
    frontier, seen, layer = list(node.inputs), set(), None
    while frontier and layer is None and len(seen) < 200:
        n = frontier.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        name = getattr(n, "_name", None)
        if name and not name.startswith("_"):
            layer = name
        frontier.extend(n.inputs)
    return f" at op {op}" + (f" after layer {layer!r}" if layer else "")


def _channel_groups(dg, group) -> int:
    import torch.nn as nn

    n = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
            continue  # depthwise: channels pair one-to-one, no grouping constraint
        if dg.is_out_channel_pruning_fn(dep.handler):
            n = max(n, dg.get_pruner_of_module(m).get_out_channel_groups(m))
        elif dg.is_in_channel_pruning_fn(dep.handler):
            n = max(n, dg.get_pruner_of_module(m).get_in_channel_groups(m))
    return n


def _records(model, dg, criterion: Criterion, ignored, initial: dict[str, int]) -> list[_Record]:
    import torch
    import torch.nn as nn

    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        imp = criterion(group)
        if imp is None:
            continue
        ch_groups = _channel_groups(dg, group)
        if len(imp) % ch_groups:
            raise ModelError(f"layer {names.get(id(root))!r}: {len(imp)} channels do not split into {ch_groups} "
                             "groups; torch-pruning cannot prune this grouped convolution consistently. Ignore it "
                             "with --ignore")
        scores = imp.float().view(ch_groups, -1).mean(0) if ch_groups > 1 else imp.float()
        scores = torch.nan_to_num(scores, nan=0.0)
        name = names.get(id(root), type(root).__name__)
        out.append(_Record(name, group, root, handler, scores.cpu(), ch_groups, initial.get(name, len(scores))))
    return out


def _plan(records: list[_Record], ratio: float, config: PruneConfig) -> PrunePlan:
    """Channels to remove per group for a cumulative ``ratio`` of the original channels."""
    import torch

    want: dict[str, int] = {}
    if config.scope is Scope.GLOBAL:
        total_initial = sum(r.initial for r in records)
        n_remove = sum(r.current for r in records) - int(total_initial * (1.0 - ratio))
        want = {r.name: 0 for r in records}
        if n_remove > 0:
            flat = torch.cat([r.scores for r in records])
            owner = torch.cat([torch.full((r.current,), i) for i, r in enumerate(records)])
            # stable sort: ties (e.g. zero relevance) are broken by position, the same way every run
            lowest = torch.sort(flat, stable=True).indices[:n_remove]
            counts = torch.bincount(owner[lowest], minlength=len(records))
            want = {r.name: int(counts[i]) for i, r in enumerate(records)}
    else:
        want = {r.name: max(0, r.current - int(r.initial * (1.0 - ratio))) for r in records}

    removals, capped = {}, []
    step = config.round_to or 1
    for r in records:
        keep = r.current - want[r.name]
        if keep != r.current and step > 1:
            keep = max(step, int(round(keep / step)) * step)
        floor_keep = math.ceil(r.initial * (1.0 - config.max_layer_ratio))
        if config.max_layer_ratio < 1.0:
            floor_keep = max(floor_keep, 1, min(step, r.initial))
        if keep < floor_keep:
            keep = math.ceil(floor_keep / step) * step if step > 1 else floor_keep
            capped.append(r.name)
        keep = min(keep, r.current)
        if keep <= 0:
            raise ConfigError(
                f"this target would empty layer {r.name!r} ({r.current} channels, none kept); lower the ratio or "
                f"target, or keep max_layer_ratio (--max-layer-ratio) below 1 so every layer keeps some channels")
        removals[r.name] = r.current - keep
    return PrunePlan(removals=removals, capped=capped, sizes={r.name: r.current for r in records})


def _apply(dg, records: list[_Record], plan: PrunePlan) -> None:
    import torch

    for r in records:
        n = plan.removals[r.name]
        if n <= 0:
            continue
        idxs = torch.sort(r.scores, stable=True).indices[:n]
        size = r.current
        full = torch.cat([idxs + g * size for g in range(r.ch_groups)]) if r.ch_groups > 1 else idxs
        group = dg.get_pruning_group(r.root, r.handler, sorted(full.tolist()))
        if not dg.check_pruning_group(group):
            raise ConfigError(f"removing {n} of {size} channels of {r.name!r} would empty a layer coupled to it; "
                              "lower the ratio or the target")
        group.prune()


def _check_runs(model, example, arch: str) -> None:
    """A forward pass after surgery; on failure name the layer where the pruned graph broke."""
    import torch

    last: list[str] = [""]
    handles = [m.register_forward_pre_hook(lambda mod, inp, _n=n: last.__setitem__(0, _n))
               for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:  # noqa: BLE001
        layer = last[0] or "(model input)"
        raise ModelError(
            f"torch-pruning could not trace the channel coupling of {arch}: after surgery the model fails at or "
            f"after layer {layer!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). An op there (e.g. a "
            "reshape or channel shuffle) couples channels the dependency graph does not see; ignore that layer "
            "(--ignore) or prune another architecture") from None
    finally:
        for h in handles:
            h.remove()


def prune_model(model, example, criterion: Criterion, *, ratio: float | None, config: PruneConfig,
                initial: dict[str, int] | None = None, arch: str = "model") -> PrunePlan:
    """One pruning step in place: ``ratio`` is the cumulative share of the *original* channels removed."""
    ignored = _ignored_modules(model, config)
    dg = _build_graph(model, example)
    criterion.bind(model)
    try:
        records = _records(model, dg, criterion, ignored, initial or {})
    except (ConfigError, ModelError):
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"torch-pruning cannot group the channels of {arch}: {type(e).__name__}: {e}. Ignore the "
                         "layers involved (--ignore NAME) or prune another architecture") from None
    if not records:
        raise ModelError(f"{arch} has no prunable convolution or linear layer outside the ignored ones")
    if config.target_latency_ms is not None:
        from edgetl.prune.budget import latency_plan

        plan = latency_plan(records, config)
    else:
        plan = _plan(records, ratio, config)
    _apply(dg, records, plan)
    _check_runs(model, example, arch)
    return plan


# --------------------------------------------------------------------------- search
def _search_ratio(model, example, criterion: Criterion, config: PruneConfig, input_shape, base, arch) -> float:
    """The smallest channel ratio whose one-shot result meets the FLOPs or parameter target."""
    key = "flops" if config.target_flops is not None else "params"
    target = (config.target_flops if key == "flops" else config.target_params) * getattr(base, key)

    def cost(ratio: float) -> int:
        trial = copy.deepcopy(model)
        prune_model(trial, example, criterion, ratio=ratio, config=config, arch=arch)
        c = model_cost(trial, input_shape)
        criterion.bind(model)
        return getattr(c, key)

    hi = min(0.99, config.max_layer_ratio if config.max_layer_ratio < 1.0 else 0.99)
    reached = cost(hi)
    if reached > target:
        raise ConfigError(
            f"target {key} {target / getattr(base, key):.1%} of the original is out of reach: pruning every layer "
            f"down to the cap (max_layer_ratio {config.max_layer_ratio}) keeps {reached / getattr(base, key):.1%}; "
            "reaching it would empty layers. Raise the target or --max-layer-ratio")
    lo = 0.0
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        if cost(mid) <= target:
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


def prune(artifact: Artifact, config: PruneConfig | None = None, *, data: DataSplits | None = None,
          recover: Recover | None = None) -> Artifact:
    """Prune a PyTorch artifact's channels; returns a new artifact whose model is genuinely smaller.

    ``data`` supplies the reference set (``samples_per_class`` per class from its train split) for data-driven
    criteria, the accuracy before/after (val split) and recovery training. ``recover`` replaces the default
    recovery (plain fine-tuning for ``recover_epochs``), e.g. with distillation from the unpruned model.
    """
    import torch

    config = config or PruneConfig()
    start = time.perf_counter()
    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ModelError(f"pruning needs a PyTorch model; this artifact is {artifact.format.value}")
    criterion = make_criterion(config.criterion, normalize=config.normalize, composite=config.composite,
                               seed=config.seed, batch_size=config.batch_size)
    if data is None and (criterion.needs_data or config.recover_epochs or recover is not None):
        raise ConfigError(f"criterion {config.criterion!r} and recovery need data (a reference set); pass data=")
    if data is not None:
        check_classes(artifact.labels, data)
    arch = artifact.arch or type(artifact.model).__name__
    spec = artifact.input_spec
    model = copy.deepcopy(artifact.model).eval()
    example = torch.zeros(spec.batch_shape(1))
    base = model_cost(model, spec.shape)
    widths_before = layer_widths(model)

    from edgetl.train import evaluate_module

    acc_before = evaluate_module(model, data.val, spec)["accuracy"] if data is not None else None
    reference = None
    if criterion.needs_data:
        reference = reference_set(data.train, spec, per_class=config.samples_per_class, seed=config.seed,
                                  num_classes=data.num_classes)
    initial: dict[str, int] | None = None
    scoring = [criterion.prepare(model, reference)]
    ratio = config.ratio
    if ratio is None and config.target_latency_ms is None:
        ratio = _search_ratio(model, example, criterion, config, spec.shape, base, arch)
    if recover is None and config.recover_epochs > 0:
        recover = _default_recover(config.recover_epochs, config.recover_lr, config.seed)
    steps, capped = [], set()
    latency_allocation = None
    current = artifact
    for step in range(1, config.steps + 1):
        if step > 1:
            scoring.append(criterion.prepare(model, reference))
        step_ratio = ratio * step / config.steps if ratio is not None else None
        plan = prune_model(model, example, criterion, ratio=step_ratio, config=config, initial=initial, arch=arch)
        if plan.latency is not None:  # latency target: the ratio is what the allocation removed
            ratio = step_ratio = sum(plan.removals.values()) / max(1, sum(plan.sizes.values()))
            latency_allocation = plan.latency
        capped.update(plan.capped)
        initial = initial or plan.sizes
        info: dict[str, Any] = {"step": step, "ratio": round(step_ratio, 4),
                                "channels_removed": sum(plan.removals.values())}
        if recover is not None:
            current = current.with_stage(StageRecord("prune-step", {"step": step}, {}), model=model)
            recovered = recover(current, data)
            if recovered.model is not model:  # keep the graph's modules: copy weights back
                model.load_state_dict(recovered.model.state_dict())
            info["val_accuracy_after_recovery"] = evaluate_module(model, data.val, spec)["accuracy"]
        steps.append(info)
    model.eval()
    after = model_cost(model, spec.shape)
    acc_after = evaluate_module(model, data.val, spec)["accuracy"] if data is not None else None
    widths_after = layer_widths(model)
    total_before = sum((initial or {}).values())
    metrics = {
        "criterion": config.criterion,
        "ratio": round(ratio, 4),
        "params_before": base.params, "params_after": after.params,
        "flops_before": base.flops, "flops_after": after.flops,
        "macs_before": base.macs, "macs_after": after.macs,
        "bytes_before": base.bytes, "bytes_after": after.bytes,
        "params_reduction": 1.0 - after.params / base.params,
        "flops_reduction": 1.0 - after.flops / base.flops if base.flops else 0.0,
        "val_accuracy_before": acc_before, "val_accuracy_after": acc_after,
        "prunable_channels_before": total_before,
        "capped_layers": sorted(capped),
        "steps": steps,
        "scoring": scoring,
        "widths_before": widths_before, "widths_after": widths_after,
    }
    if latency_allocation is not None:
        metrics["latency_allocation"] = latency_allocation
    record = StageRecord("prune", config.to_dict(), metrics, time.perf_counter() - start)
    return artifact.with_stage(record, model=model)
