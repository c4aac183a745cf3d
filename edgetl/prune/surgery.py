"""One pruning step: group channels with torch-pruning's dependency graph, plan removals under the per-layer
cap, perform the surgery, and check the pruned model still runs (naming the layer where it breaks)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from edgetl.errors import ConfigError, ModelError
from edgetl.prune.config import PruneConfig, Scope
from edgetl.prune.criteria import Criterion

__all__ = ["PrunePlan", "check_output_shapes", "output_layers", "output_shapes", "prune_model"]

log = logging.getLogger(__name__)


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
def output_layers(model, example) -> list[str]:
    """The conv/linear layers that produce the model's outputs: walking back from every output tensor through
    the autograd graph, the first conv/linear reached on each path (through activations, norms, reshapes, but
    never through another conv/linear). Found by tracing one forward pass, not by name, so every head of a
    multi-head model is found whatever it is called. Pruning one of them would change an output's shape."""
    import torch
    import torch.nn as nn

    from edgetl.prune.feeds import call, named_outputs

    produced: dict[Any, str] = {}

    def on_layer(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                produced[output.grad_fn] = name
        return hook

    handles = [m.register_forward_hook(on_layer(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was = model.training
    model.eval()
    feed = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) for x in example) \
        if isinstance(example, tuple) else example.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            outs = [t for t in named_outputs(call(model, feed)).values() if isinstance(t, torch.Tensor)]
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    found: list[str] = []
    stack, seen = [t.grad_fn for t in outs if t.grad_fn is not None], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def _ignored_modules(model, config: PruneConfig, example=None) -> list[Any]:
    """The user's ignored layers, the classifier (classic path), and, given an ``example``, every output layer
    found by tracing (:func:`output_layers`)."""
    from edgetl.models import classifier_layer

    ignored = []
    if config.ignore is not None:
        ignored = [m for n, m in model.named_modules() if n and config.ignore(n, m)]
    if config.ignore_classifier:
        try:
            ignored.append(classifier_layer(model)[1])
        except ModelError:
            log.info("no nn.Linear classifier found; nothing ignored by default")
    if example is not None:
        heads = output_layers(model, example)
        ignored += [model.get_submodule(n) for n in heads if all(m is not model.get_submodule(n) for m in ignored)]
    return ignored


def output_shapes(model, example) -> dict[str, tuple[int, ...]]:
    """Every output's shape on ``example`` (no grad), by output name."""
    import torch

    from edgetl.prune.feeds import call, named_outputs

    with torch.no_grad():
        return {k: tuple(v.shape) for k, v in named_outputs(call(model, example)).items() if hasattr(v, "shape")}


def check_output_shapes(before: dict[str, tuple[int, ...]], model, example, arch: str) -> None:
    """After surgery every output keeps its shape; else one ModelError line naming the output."""
    after = output_shapes(model, example)
    for name, shape in before.items():
        if after.get(name) != shape:
            raise ModelError(f"pruning changed output {name!r} of {arch} from {list(shape)} to "
                             f"{list(after[name]) if name in after else 'missing'}; leave the layer that makes it "
                             "unpruned with --ignore LAYER")


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

    from edgetl.prune.feeds import call

    last: list[str] = [""]
    handles = [m.register_forward_pre_hook(lambda mod, inp, _n=n: last.__setitem__(0, _n))
               for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            call(model, example)
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
    """One pruning step in place: ``ratio`` is the cumulative share of the *original* channels removed.

    ``example`` is one input tensor or a tuple of a multi-input model's positional inputs. Every output layer
    found by tracing is left unpruned (with the classifier and ``config.ignore``), and after surgery every
    output must keep its shape (a ModelError naming the output otherwise)."""
    shapes = output_shapes(model, example)
    ignored = _ignored_modules(model, config, example)
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
    check_output_shapes(shapes, model, example, arch)
    return plan
