"""The pipeline's budget search: the most aggressive pruning ratio whose compressed model meets the budgets.

``budgets: {max_accuracy_drop: 1.0, target_latency_ms: 5, device: x86-cpu, ratios: [0.7, 0.5, 0.3]}`` tries the
ratios from the most aggressive down. Each candidate runs prune (with its recovery), distill and quantize as the
recipe says, and is cached like any stage, so a rerun of the search costs nothing.

Example::

    ratio, met, tried = search_budget(ctx, run_chain)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgetl.run_stages import accuracy
from edgetl.stages import stage_kind

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.pipeline import _Context

__all__ = ["search_budget"]


def search_budget(ctx: _Context, run_chain: Callable[..., Any]) -> tuple[float | None, bool, list[dict[str, Any]]]:
    """Try pruning ratios from the most aggressive down; the first whose compressed model meets the budgets wins.

    ``run_chain(ctx, ratio=..., until=RANK)`` runs the recipe's stages up to the last compress stage.
    """
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile
    from edgetl.run_bench import bench_ready

    b = ctx.recipe.budgets
    ref = accuracy(ctx.source, ctx.data)
    tried: list[dict[str, Any]] = []
    last_compress = stage_kind("quantize" if ctx.recipe.stage("quantize") is not None else "distill").rank
    for ratio in b.ratios:
        run_chain(ctx, ratio=ratio, until=last_compress)
        final = ctx.quantized or ctx.current
        acc = accuracy(final, ctx.data)  # a model scored by its contract: the task's headline against the source
        if acc is None:  # nothing to agree on (no box in either model): it cannot be judged, so it does not pass
            row: dict[str, Any] = {"ratio": ratio, "val_accuracy": 0.0, "drop_points": 100 * ref,
                                   "note": "not measurable: nothing to agree on"}
        else:
            row = {"ratio": ratio, "val_accuracy": acc, "drop_points": 100 * (ref - acc)}
        ok = acc is not None and (b.max_accuracy_drop is None or row["drop_points"] <= b.max_accuracy_drop)
        if b.target_latency_ms is not None:
            r = measure(bench_ready(final, ctx), BenchConfig(threads=2, min_time_s=1.0, min_count=50), profile=load_profile(b.device))
            row["p90_ms"] = r.latency_ms.p90
            ok = ok and r.latency_ms.p90 <= b.target_latency_ms
        row["meets_budget"] = ok
        tried.append(row)
        if ok:
            return ratio, True, tried
    best = max(tried, key=lambda t: t["val_accuracy"])
    return best["ratio"], False, tried
