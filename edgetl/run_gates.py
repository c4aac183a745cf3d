"""The pipeline's quality gates: after prune, distill and quantize, a stage's output is judged against its input.

Budgets come from :mod:`edgetl.gates`: a stage's own ``max_drop`` wins, then the recipe's ``budgets: {quantize:
0.5, ...}``, then the default. A prune or distill output past its budget (or collapsed) stops the compressed
branch; a quantized output past its budget is measured but never recommended (:mod:`edgetl.run_report`).

Example::

    gate(ctx, outcome)            # appends an edgetl.gates.Verdict to ctx.verdicts (and may set ctx.stopped)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from edgetl import gates
from edgetl.run_stages import accuracy
from edgetl.run_task import TaskSplits

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.pipeline import StageOutcome, _Context

__all__ = ["export_accuracies", "export_verdicts", "gate", "recovered_later"]


def recovered_later(ctx: _Context, kind: str) -> bool:
    kinds = [s.kind for s in ctx.recipe.stages]
    return "distill" in kinds[kinds.index(kind) + 1:]


def gate(ctx: _Context, outcome: StageOutcome) -> None:
    """Judge a stage's output against its input (val split) and record the verdict."""
    m, kind, budgets = outcome.summary, outcome.kind, ctx.recipe.budgets.stages
    if kind == "export":
        ctx.verdicts.extend(export_verdicts(m, budgets))
        return
    if isinstance(ctx.data, TaskSplits):
        v = task_verdict(ctx, kind)
    elif kind == "quantize" and "fp32_accuracy" in m and "accuracy" in m:
        v = gates.check("quantize", before=m["fp32_accuracy"], after=m["accuracy"], agreement=m.get("agreement"),
                        split=m.get("split", "val"), budget=ctx.recipe.stage("quantize").config.max_drop,
                        budgets=budgets)
    elif kind == "prune" and recovered_later(ctx, kind):
        return  # a distill stage after it is the recovery: the branch is judged after distillation
    elif kind == "prune" and m.get("val_accuracy_before") is not None and m.get("val_accuracy_after") is not None:
        v = gates.check("prune", before=m["val_accuracy_before"], after=m["val_accuracy_after"], budgets=budgets)
        c = gates.collapse(gates.prune_points(m), before=m["val_accuracy_before"], num_classes=ctx.data.num_classes)
        if c.collapsed:
            v = dataclasses.replace(v, passed=False, allowed=False, note=c.line())
    elif kind == "distill" and m.get("best_val_accuracy") is not None:
        v = gates.check("distill", before=accuracy(ctx.source, ctx.data), after=m["best_val_accuracy"],
                        budgets=budgets)
    else:
        return
    if v is None:
        return
    ctx.verdicts.append(v)
    if not v.allowed and kind in ("prune", "distill"):
        ctx.stopped = v
        ctx.current = ctx.source  # nothing downstream builds on the failed output


def task_verdict(ctx: _Context, kind: str) -> gates.Verdict | None:
    """A stage of a run scored through the contract: its output's headline against the source (val split) beside
    its input's (the source scores 100 % against itself), the drop in points of that metric. Distillation, like the
    classifier's gate, is judged against the source (its teacher): the branch's recovery, end to end."""
    if kind not in ("prune", "distill", "quantize") or (kind == "prune" and recovered_later(ctx, kind)):
        return None
    data, metric = ctx.data, ctx.data.metric.phrase()
    output = ctx.quantized if kind == "quantize" else ctx.current
    reference = ctx.source if kind == "distill" else ctx.previous
    before = 1.0 if reference is ctx.source else accuracy(reference, data)
    after = accuracy(output, data)
    budget = ctx.recipe.stage("quantize").config.max_drop if kind == "quantize" else None
    if before is None or after is None:  # e.g. no box above the threshold in either model: nothing to agree on
        return gates.Verdict(stage=kind, passed=False, allowed=False, before=before or 0.0, after=after or 0.0,
                             drop_points=0.0, budget_points=gates.budget_for(kind, budget, budgets=ctx.recipe.budgets
                                                                             .stages), split="val",
                             samples=len(data.val), metric=metric,
                             note=f"{metric} could not be measured: nothing to agree on (0 % and 100 % are stand-ins)")
    return gates.check(kind, before=before, after=after, split="val", samples=len(data.val), budget=budget,
                       budgets=ctx.recipe.budgets.stages, metric=metric)


def export_accuracies(ctx: _Context, arts, sources) -> list[dict]:
    """Val accuracy of each export a runtime here can load, beside that of the model it was exported from
    (``sources[i]``): what the export gate judges. A format without a runtime here (a TensorRT bundle) gets
    None: parity checked it as far as this machine can."""
    from edgetl.formats import FORMAT_INFO

    cache: dict[int, float] = {}
    out = []
    for art, src in zip(arts, sources, strict=True):
        if not FORMAT_INFO[art.format].runtime:
            out.append({"val_accuracy": None, "source_val_accuracy": None})
            continue
        if id(src) not in cache:
            cache[id(src)] = accuracy(src, ctx.data)
        out.append({"val_accuracy": accuracy(art, ctx.data), "source_val_accuracy": cache[id(src)],
                    "samples": len(ctx.data.val)})
        if isinstance(ctx.data, TaskSplits):  # the scores are the task's headline against the source model
            out[-1]["metric"] = ctx.data.metric.phrase()
    return out


def export_verdicts(summary: dict, budgets: dict[str, float]) -> list[gates.Verdict]:
    """One verdict per measured export (stage ``export:FORMAT``): the export against the model it came from."""
    out = []
    for e in summary.get("exports", []):
        if e.get("val_accuracy") is None or e.get("source_val_accuracy") is None:
            continue
        v = gates.check("export", before=e["source_val_accuracy"], after=e["val_accuracy"], budgets=budgets,
                        samples=e.get("samples"), metric=e.get("metric"))
        out.append(dataclasses.replace(v, stage=f"export:{e['format']}"))
    return out
