"""Which artifact a run recommends, and its speed-ups against the baselines: split from
:mod:`edgetl.run_report` so the rule that chooses (which rows are eligible, how they are ranked) lives apart from
the rendering.

Eligible (:func:`eligible`): a deployable row (an exported file) whose stage passed its gate, within ``budget``
points of the teacher on its device, in the run's metric (top-1 against labels, or the task's fidelity against
the source model: :func:`metric_words` names it in the sentence). Ranked by the median call (p50), p90 shown.
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
    # Ranked by the median call, not p90: beside busy processes the tail measures the scheduler (ONNX Runtime and
    # ExecuTorch at 1 ms swapped places by p90 between a quiet and a loaded demo; by p50 they did not). p90 is shown.
    best = min(ok, key=lambda r: (r.result["latency_ms"]["p50"], r.result["latency_ms"]["p90"]))
    from benchmarks.report import format_ratio

    p90 = best.result["latency_ms"]["p90"]
    speed = teacher.result["latency_ms"]["p90"] / p90
    trust = (" (timings contended: the ratio is not reliable)" if best.contended or teacher.contended else "")
    line = (f"ship {best.file} ({best.result['format']}, {best.result['runtime']}, {best.result['precision']}): the "
            f"fastest deployable artifact within {budget:g} points of the teacher (median latency "
            f"{best.result['latency_ms']['p50']:.3f} ms), p90 {p90:.3f} ms on {device}, "
            f"{format_ratio(speed)} the teacher in PyTorch eager{trust}, {short} {100 * best.accuracy:.2f} % vs "
            f"{100 * teacher.accuracy:.2f} % ({best.accuracy_split})")
    rec = {"device": device, "role": best.role, "artifact": best.result["artifact"], "file": best.file,
           "format": best.result["format"], "runtime": best.result["runtime"], "p90_ms": p90,
           "accuracy": best.accuracy, "teacher_accuracy": teacher.accuracy, "reliable": not trust, "line": line}
    if metric:
        rec["metric"] = metric.get("name")
    return rec


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
