"""Which latency figure orders artifacts, so a busy machine does not pick the file to ship.

On an idle machine the median call (p50) orders them. When the timings stayed contended after the re-measure
(:mod:`benchmarks.interleave`), the scheduler is in every figure of this run, and runtimes lose unequally under
preemption (a 2-thread XNNPACK pool more than ONNX Runtime), so:

1. **A clean record of the same bytes.** When the results store holds an uncontended measurement of *every*
   artifact, same content (sha256), device, host and settings, taken in one interleaved run, they are ranked by
   that run's p50s (``ranked_by: "clean-record:<interleaved run>"``). One run, not the best record of each: two
   quiet periods can differ by more than the artifacts do.
2. **Otherwise the lower tail of this run's calls.** Contention only adds time to a call, so the fastest calls
   estimate the uncontended cost better than the median does: Chen & Revels 2016, "Robust benchmarking in noisy
   environments" (arXiv:1608.04295), the basis of Julia's BenchmarkTools, argue for the minimum. Here each round's
   fastest call, the median over rounds (``ranked_by: "min-per-call"``). It is trusted only when it and the
   median call pick the same artifact, no other artifact is as fast in any round, and no artifact within the
   spread rule of it (25 %) has per-round ratios to it that disagree by more than that rule; otherwise the
   ranking is **unsettled** and names the (at most three) candidates within the noise.

Example::

    r = rank([result_a, result_b])      # BenchResult dicts, as results.json holds them
    r.best, r.ranked_by, r.settled      # 1, "min-per-call", True
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ranking", "rank"]

_DEFAULT_SPREAD = 0.25  # benchmarks.interleave.InterleaveConfig.max_spread


@dataclass(frozen=True)
class Ranking:
    """The order of the given results, best first, and what it rests on."""

    order: list[int]
    ranked_by: str  # "p50", "clean-record:<interleaved run>", "min-per-call"
    figure_ms: list[float]  # per given result: the figure ranked by
    settled: bool = True
    candidates: list[int] = field(default_factory=list)  # unsettled: the results within the noise, best first
    why: str | None = None  # unsettled: what disagreed
    record: dict[str, Any] | None = None  # clean-record: the run it comes from

    @property
    def best(self) -> int:
        return self.order[0]


def _p50(r: dict[str, Any]) -> tuple[float, float]:
    lat = r["latency_ms"]
    return lat["p50"], lat["p90"]


def rank(results: Sequence[dict[str, Any]]) -> Ranking:
    """Rank ``results`` (BenchResult dicts of one device, at least one); see the module docstring."""
    p50 = [_p50(r) for r in results]
    by_p50 = sorted(range(len(results)), key=lambda i: p50[i])
    if not any(r.get("contended") for r in results):
        return Ranking(order=by_p50, ranked_by="p50", figure_ms=[p[0] for p in p50])
    record = _common_clean_run(results)
    if record is not None:
        fig = [rec["p50_ms"] for rec in record["records"]]
        order = sorted(range(len(results)), key=lambda i: (fig[i], record["records"][i]["p90_ms"]))
        info = {k: record[k] for k in ("interleaved_run", "run_id", "created")}
        info["store_ids"] = [rec["store_id"] for rec in record["records"]]
        return Ranking(order=order, ranked_by=f"clean-record:{record['interleaved_run']}", figure_ms=fig,
                       record=info)
    return _lower_tail(results, by_p50)


def _common_clean_run(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest interleaved run in which every result's bytes were measured clean, with each one's record."""
    per = [{c["interleaved_run"]: c for c in r.get("clean_records") or ()} for r in results]
    common = set(per[0]).intersection(*per[1:])
    if not common:
        return None
    session = max(common, key=lambda s: (per[0][s]["created"], s))
    first = per[0][session]
    return {"interleaved_run": session, "run_id": first.get("run_id"), "created": first["created"],
            "records": [p[session] for p in per]}


def _lower_tail(results: Sequence[dict[str, Any]], by_p50: list[int]) -> Ranking:
    mins = [[rd.get("min_ms") for rd in r.get("rounds") or ()] for r in results]
    p50_fig = [_p50(r)[0] for r in results]
    if any(not m or None in m for m in mins):
        return Ranking(order=by_p50, ranked_by="p50", figure_ms=p50_fig, settled=len(results) == 1,
                       candidates=by_p50[:3], why="no per-call lower tail was recorded for these timings")
    est = [statistics.median(m) for m in mins]
    order = sorted(range(len(results)), key=lambda i: (est[i], p50_fig[i]))
    best = order[0]
    spread_rule = float((results[best].get("config") or {}).get("max_spread") or _DEFAULT_SPREAD)
    noisy, why = [], []
    for i in order[1:]:
        k = min(len(mins[i]), len(mins[best]))
        ratios = [mins[i][j] / mins[best][j] for j in range(k) if mins[best][j] > 0]
        med = statistics.median(ratios) if ratios else 0.0
        spread = (max(ratios) - min(ratios)) / med if med > 0 else float("inf")
        name = results[i].get("artifact")
        reasons = []
        if i == by_p50[0]:
            reasons.append(f"the median call ranks {name} first")
        if ratios and min(ratios) <= 1.0:
            reasons.append(f"{name} was as fast in {sum(x <= 1.0 for x in ratios)} of {len(ratios)} rounds")
        if spread > spread_rule and med <= 1 + spread_rule:  # near enough that the rounds' disagreement matters
            reasons.append(f"the rounds' ratios of {name} to {results[best].get('artifact')} disagree by "
                           f"{100 * spread:.0f} % (more than {100 * spread_rule:.0f} %)")
        if reasons and len(noisy) < 2:  # named: the best and at most two others
            why += reasons
        if reasons:
            noisy.append(i)
    return Ranking(order=order, ranked_by="min-per-call", figure_ms=est, settled=not noisy,
                   candidates=[best, *noisy][:3] if noisy else [], why="; ".join(why) or None)
