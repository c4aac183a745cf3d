"""Which artifact a run recommends, and its speed-ups against the baselines: split from
:mod:`edgetl.run_report` so the rule that chooses (which rows are eligible, how they are ranked) lives apart from
the rendering.

Eligible (:func:`eligible`): a deployable row (an exported file) whose stage passed its gate, within ``budget``
points of the teacher on its device, in the run's metric (top-1 against labels, or the task's fidelity against
the source model: :func:`metric_words` names it in the sentence). Ranked (:mod:`benchmarks.ranking`) by the median
call (p50), p90 shown; when the eligible rows' timings stayed contended, by the store's clean record of the same
files, else by the lower tail of the calls, and the recommendation says which (``ranked_by``) or that the choice
is unsettled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetl.run_report import ReportRow, RunReport

__all__ = ["eligible", "metric_words", "recommend", "speedups"]


def eligible(rows: list[ReportRow], teacher: ReportRow, budget: float, blocked: set[str]) -> list[ReportRow]:
    """The rows a recommendation may pick: deployable, their stage's gate passed, within ``budget`` points of the
    teacher's score (top-1, or the task's fidelity against the source, where the teacher scores 100 %)."""
    return [r for r in rows if r.deployable and r.role not in blocked and r.accuracy is not None
            and 100 * (teacher.accuracy - r.accuracy) <= budget + 1e-9]


def metric_words(metric: dict[str, Any] | None) -> tuple[str, str]:
    """How the recommendation names the score: (in the sentence, after "the teacher's"): ("top-1", "accuracy")
    for labels, ("mIoU vs source", "mIoU vs source") for a model scored against its source."""
    if not metric or metric.get("reference", "labels") == "labels":
        return "top-1", "accuracy"
    phrase = str(metric.get("label", metric.get("name", ""))).removesuffix(" %")
    return phrase, phrase


def recommend(rows: list[ReportRow], budget: float, blocked: set[str], metric: dict[str, Any] | None = None
              ) -> dict[str, Any] | None:
    if not rows:
        return None
    device = rows[0].device
    on_dev = [r for r in rows if r.device == device and r.accuracy is not None]
    teacher = next((r for r in on_dev if r.role == "teacher"), None)
    if teacher is None:
        return None
    ok = eligible(on_dev, teacher, budget, blocked)
    short, noun = metric_words(metric)
    if not ok:
        return {"device": device, "line": f"no artifact met the budget: no deployable artifact is within {budget:g} "
                                          f"points of the teacher's {noun} ({100 * teacher.accuracy:.2f} %)"}
    from benchmarks.ranking import rank

    ranking = rank([r.result for r in ok])
    best = ok[ranking.best]
    p90 = best.result["latency_ms"]["p90"]
    trust = (" (timings contended: the ratio is not reliable)" if best.contended or teacher.contended else "")
    line = _line(best, teacher, ok, ranking, budget=budget, device=device, trust=trust, score=short)
    rec = {"device": device, "role": best.role, "artifact": best.result["artifact"], "file": best.file,
           "format": best.result["format"], "runtime": best.result["runtime"], "p90_ms": p90,
           "accuracy": best.accuracy, "teacher_accuracy": teacher.accuracy,
           "reliable": not trust and ranking.settled, "line": line, **_ranking_fields(ok, ranking)}
    if metric:
        rec["metric"] = metric.get("name")
    return rec


# --------------------------------------------------------------------------- the ranking side
# Ranked by the median call (p50), not p90: beside busy processes the tail measures the scheduler (ONNX Runtime and
# ExecuTorch at 1 ms swapped places by p90 between a quiet and a loaded demo). When the eligible rows stay
# contended after the re-measure, benchmarks.ranking ranks by a clean record of the same bytes, or by the lower tail
# of the calls, and says when that does not settle the choice. p90 is shown.
def _ranking_fields(ok: list[ReportRow], ranking) -> dict[str, Any]:
    out: dict[str, Any] = {"ranked_by": ranking.ranked_by, "settled": ranking.settled,
                           "ranking_ms": {ok[i].file: round(ranking.figure_ms[i], 6) for i in ranking.order},
                           "basis": _basis(ranking)}
    if ranking.record is not None:
        out["clean_record"] = ranking.record
    if not ranking.settled:
        out["candidates"] = [ok[i].file for i in ranking.candidates]
        out["unsettled_because"] = ranking.why
    return out


def _basis(ranking) -> str:
    """What orders the rows, in words (the report's table note)."""
    if ranking.record is not None:
        rec = ranking.record
        return (f"the uncontended p50 of the same files in run {rec['run_id'] or 'edgetl bench'} at "
                f"{rec['created']}; this run's timings were contended")
    if ranking.ranked_by == "min-per-call":
        tail = "the lower tail of each artifact's calls (each round's fastest call, median over rounds)"
        return tail + ("" if ranking.settled else ", which does not settle the choice") + \
            "; this run's timings were contended"
    if not ranking.settled:
        return "p50, which does not settle the choice: this run's timings were contended"
    return "p50"


def _line(best: ReportRow, teacher: ReportRow, ok: list[ReportRow], ranking, *, budget: float, device: str,
          trust: str, score: str = "top-1") -> str:
    from benchmarks.report import format_ratio

    lat = best.result["latency_ms"]
    speed = teacher.result["latency_ms"]["p90"] / lat["p90"]
    what = f"{best.file} ({best.result['format']}, {best.result['runtime']}, {best.result['precision']})"
    tail = (f"p90 {lat['p90']:.3f} ms on {device}, {format_ratio(speed)} the teacher in PyTorch eager{trust}, {score} "
            f"{100 * best.accuracy:.2f} % vs {100 * teacher.accuracy:.2f} % ({best.accuracy_split})")
    within = f"within {budget:g} points of the teacher"
    if not ranking.settled:
        names = ", ".join(f"{ok[i].file} ({ranking.figure_ms[i]:.3f} ms by {_figure(ranking)}, median "
                          f"{ok[i].result['latency_ms']['p50']:.3f} ms)" for i in ranking.candidates)
        return (f"UNSETTLED: this run's timings were contended and the store holds no clean measurement of the same "
                f"files, so the fastest deployable artifact {within} is not settled: {names} are within the noise "
                f"({ranking.why}). Rerun the bench stage on an idle machine. Provisionally {what}: median latency "
                f"{lat['p50']:.3f} ms, {tail}")
    if ranking.record is not None:
        rec = ranking.record
        return (f"ship {what}: the fastest deployable artifact {within}, ranked by the uncontended measurement of "
                f"the same files in run {rec['run_id'] or 'edgetl bench'} at {rec['created']} (median latency "
                f"{ranking.figure_ms[ranking.best]:.3f} ms there; rounds {rec['interleaved_run']}); this run's "
                f"timings were contended (median {lat['p50']:.3f} ms), {tail}")
    if ranking.ranked_by == "min-per-call":
        return (f"ship {what}: the fastest deployable artifact {within} by the lower tail of its calls "
                f"({ranking.figure_ms[ranking.best]:.3f} ms, the median over rounds of each round's fastest call), "
                f"because this run's timings were contended and the store holds no clean measurement of the same "
                f"files; median latency {lat['p50']:.3f} ms, {tail}")
    return f"ship {what}: the fastest deployable artifact {within} (median latency {lat['p50']:.3f} ms), {tail}"


def _figure(ranking) -> str:
    return "fastest call" if ranking.ranked_by == "min-per-call" else "median"


def speedups(report: RunReport) -> dict[str, Any]:
    """p90 ratios of the recommended artifact against the baselines, per device (``reliable`` says whether the
    timings behind them were uncontended)."""
    out: dict[str, Any] = {}
    for device in dict.fromkeys(r.device for r in report.rows):
        rows = [r for r in report.rows if r.device == device]
        rec = recommend(rows, report.budget_points, set(report.blocked_roles), report.metric)
        if not rec or "role" not in rec:
            continue
        on = {r.role: r for r in rows}
        best = on[rec["role"]]
        d: dict[str, Any] = {"shipped": rec["file"], "reliable": True}
        for key, role in (("vs_teacher_eager", "teacher"), ("vs_teacher_int8", "baseline:teacher-int8"),
                          ("vs_teacher_fp32_export", "baseline:teacher-fp32")):
            if role in on:
                d[key] = on[role].result["latency_ms"]["p90"] / best.result["latency_ms"]["p90"]
                d["reliable"] = d["reliable"] and not (on[role].contended or best.contended)
        out[device] = d
    return out
