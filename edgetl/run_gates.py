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
    if kind == "quantize" and "fp32_accuracy" in m and "accuracy" in m:
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
    ctx.verdicts.append(v)
    if not v.allowed and kind in ("prune", "distill"):
        ctx.stopped = v
        ctx.current = ctx.source  # nothing downstream builds on the failed output


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
    return out


def export_verdicts(summary: dict, budgets: dict[str, float]) -> list[gates.Verdict]:
    """One verdict per measured export (stage ``export:FORMAT``): the export against the model it came from."""
    out = []
    for e in summary.get("exports", []):
        if e.get("val_accuracy") is None or e.get("source_val_accuracy") is None:
            continue
        v = gates.check("export", before=e["source_val_accuracy"], after=e["val_accuracy"], budgets=budgets,
                        samples=e.get("samples"))
        out.append(dataclasses.replace(v, stage=f"export:{e['format']}"))
    return out
