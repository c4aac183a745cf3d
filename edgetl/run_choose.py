"""Which artifact a run recommends, and its speed-ups against the baselines: split from
:mod:`edgetl.run_report` so the rule that chooses (which rows are eligible, how they are ranked) lives apart from
the rendering.

Eligible: a deployable row (an exported file) whose stage passed its gate, within ``budget`` points of the
teacher on its device. Ranked by the median call (p50), p90 shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetl.run_report import ReportRow, RunReport

__all__ = ["recommend", "speedups"]


def recommend(rows: list[ReportRow], budget: float, blocked: set[str]) -> dict[str, Any] | None:
    if not rows:
        return None
    device = rows[0].device
    on_dev = [r for r in rows if r.device == device and r.accuracy is not None]
    teacher = next((r for r in on_dev if r.role == "teacher"), None)
    if teacher is None:
        return None
    ok = [r for r in on_dev if r.deployable and r.role not in blocked
          and 100 * (teacher.accuracy - r.accuracy) <= budget + 1e-9]
    if not ok:
        return {"device": device, "line": f"no artifact met the budget: no deployable artifact is within {budget:g} "
                                          f"points of the teacher's accuracy ({100 * teacher.accuracy:.2f} %)"}
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
            f"{format_ratio(speed)} the teacher in PyTorch eager{trust}, top-1 {100 * best.accuracy:.2f} % vs "
            f"{100 * teacher.accuracy:.2f} % ({best.accuracy_split})")
    return {"device": device, "role": best.role, "artifact": best.result["artifact"], "file": best.file,
            "format": best.result["format"], "runtime": best.result["runtime"], "p90_ms": p90,
            "accuracy": best.accuracy, "teacher_accuracy": teacher.accuracy, "reliable": not trust, "line": line}


def speedups(report: RunReport) -> dict[str, Any]:
    """p90 ratios of the recommended artifact against the baselines, per device (``reliable`` says whether the
    timings behind them were uncontended)."""
    out: dict[str, Any] = {}
    for device in dict.fromkeys(r.device for r in report.rows):
        rows = [r for r in report.rows if r.device == device]
        rec = recommend(rows, report.budget_points, set(report.blocked_roles))
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
