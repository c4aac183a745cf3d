"""The one report of an ``edgetl run``: ``report.json`` (data first), ``report.md`` and a self-contained
``report.html`` with the accuracy-vs-latency plot and a recommendation: the fastest artifact within the
accuracy budget (``budgets.max_accuracy_drop``, 1 point when the recipe sets none)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from edgetl.fileio import atomic_path, write_json

__all__ = ["build_report", "write_reports"]

DEFAULT_DROP = 1.0


def build_report(ctx, outcomes, *, search, chosen_ratio, budget_met) -> dict[str, Any]:
    recipe = ctx.recipe
    stages = [{"stage": o.kind, "key": o.key, "cached": o.cached, "seconds": round(o.seconds, 2),
               "directory": str(o.directory), "summary": _short(o.kind, o.summary)} for o in outcomes]
    bench = next((o for o in outcomes if o.kind == "bench"), None)
    rows = []
    if bench is not None:
        for item in bench.summary.get("results", []):
            r = item["result"]
            lat = r["latency_ms"]
            rows.append({"role": item["role"], "device": item["device"], "artifact": r["artifact"],
                         "format": r["format"], "runtime": r["runtime"], "precision": r["precision"],
                         "accuracy": r.get("accuracy"), "agreement": item.get("agreement"),
                         "params": (item.get("cost") or {}).get("params"), "flops": (item.get("cost") or {}).get("flops"),
                         "size_bytes": r.get("model_size_bytes"), "p50_ms": lat["p50"], "p90_ms": lat["p90"],
                         "p99_ms": lat["p99"], "samples": lat["count"], "threads": r.get("threads"),
                         "batch": r.get("batch")})
    budget = recipe.budgets.max_accuracy_drop if recipe.budgets.max_accuracy_drop is not None else DEFAULT_DROP
    rec = _recommend(rows, budget)
    report: dict[str, Any] = {
        "recipe": recipe.to_dict(), "fingerprint": recipe.fingerprint(), "run_dir": str(ctx.run_dir),
        "model": recipe.model, "data": recipe.data, "stages": stages, "artifacts": rows,
        "recommendation": rec, "accuracy_budget_points": budget,
    }
    if search:
        msg = (f"budget met at pruning ratio {chosen_ratio}" if budget_met else
               "budget unreachable: no pruning ratio tried met "
               + ", ".join(f"{k}={v}" for k, v in (("max_accuracy_drop", recipe.budgets.max_accuracy_drop),
                                                   ("target_latency_ms", recipe.budgets.target_latency_ms)) if v is not None)
               + f"; best reached: {_best(search)}")
        report["budget"] = {"met": budget_met, "ratio": chosen_ratio, "tried": search, "message": msg}
    report["speedups"] = _speedups(rows)
    return report


def _best(search) -> str:
    b = max(search, key=lambda t: t["val_accuracy"])
    extra = f", p90 {b['p90_ms']:.3f} ms" if "p90_ms" in b else ""
    return f"ratio {b['ratio']}: drop {b['drop_points']:.2f} points{extra}"


def _short(kind: str, summary: dict[str, Any]) -> dict[str, Any]:
    if kind == "bench":
        return {"measured": len(summary.get("results", []))}
    keep = ("params", "flops", "macs", "accuracy", "val_accuracy", "test_accuracy", "accuracy_before", "accuracy_after",
            "agreement", "ratio", "size_bytes", "exports", "best_val_accuracy", "epochs_run", "kept_in_float",
            "scoring_cost_ratio", "params_before", "params_after", "flops_before", "flops_after")
    return {k: v for k, v in summary.items() if k in keep}


def _recommend(rows: list[dict[str, Any]], budget_points: float) -> dict[str, Any] | None:
    """The fastest artifact (p90, first device) whose accuracy is within the budget of the teacher's."""
    if not rows:
        return None
    device = rows[0]["device"]
    on_dev = [r for r in rows if r["device"] == device and r["accuracy"] is not None]
    teacher = next((r for r in on_dev if r["role"] == "teacher"), None)
    if teacher is None:
        return None
    # Baselines are real artifacts of the run too: if plain int8 of the teacher is the best choice, say so.
    ok = [r for r in on_dev if 100 * (teacher["accuracy"] - r["accuracy"]) <= budget_points + 1e-9]
    if not ok:
        return {"device": device, "line": f"no artifact is within {budget_points} points of the teacher's accuracy"}
    best = min(ok, key=lambda r: r["p90_ms"])
    speed = teacher["p90_ms"] / best["p90_ms"]
    line = (f"ship {best['artifact']} ({best['format']}, {best['runtime']}, {best['precision']}): p90 "
            f"{best['p90_ms']:.3f} ms on {device}, {speed:.1f}x faster than the teacher in PyTorch eager, accuracy "
            f"{100 * best['accuracy']:.2f} % vs {100 * teacher['accuracy']:.2f} %")
    return {"device": device, "role": best["role"], "artifact": best["artifact"], "format": best["format"],
            "runtime": best["runtime"], "p90_ms": best["p90_ms"], "accuracy": best["accuracy"],
            "teacher_accuracy": teacher["accuracy"], "line": line}


def _speedups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p90 ratios of the recommended artifact against the teacher and the plain-int8 baseline, per device."""
    out: dict[str, Any] = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        on = {r["role"]: r for r in rows if r["device"] == device}
        rec = _recommend([r for r in rows if r["device"] == device], DEFAULT_DROP)
        if not rec or "role" not in rec:
            continue
        best = on[rec["role"]]
        d: dict[str, Any] = {"shipped": rec["artifact"]}
        if "teacher" in on:
            d["vs_teacher_eager"] = on["teacher"]["p90_ms"] / best["p90_ms"]
        if "baseline:teacher-int8" in on:
            d["vs_teacher_int8"] = on["baseline:teacher-int8"]["p90_ms"] / best["p90_ms"]
        out[device] = d
    return out


# --------------------------------------------------------------------------- rendering
_COLS = [("role", "role"), ("artifact", "artifact"), ("format", "format"), ("runtime", "runtime"),
         ("precision", "precision"), ("accuracy", "top-1 %"), ("agreement", "agree %"), ("params", "params"),
         ("flops", "FLOPs"), ("size_bytes", "size KiB"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"),
         ("p99_ms", "p99 ms"), ("samples", "n")]


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("accuracy", "agreement"):
        return f"{100 * v:.2f}"
    if key == "size_bytes":
        return f"{v / 1024:.0f}"
    if key in ("params", "flops"):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# edgetl run: {report['recipe']['name']}", "",
             f"model `{report['model']}` on `{report['data']}`; recipe fingerprint `{report['fingerprint']}`", ""]
    rec = report.get("recommendation")
    if rec:
        lines += [f"**Recommendation:** {rec['line']}", ""]
    if "budget" in report:
        lines += [f"**Budget:** {report['budget']['message']}", ""]
    for device in dict.fromkeys(r["device"] for r in report["artifacts"]):
        lines += [f"## {device}", "", "| " + " | ".join(h for _, h in _COLS) + " |",
                  "|" + "---|" * len(_COLS)]
        for r in (x for x in report["artifacts"] if x["device"] == device):
            lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in _COLS) + " |")
        sp = report.get("speedups", {}).get(device)
        if sp:
            parts = [f"{sp['vs_teacher_eager']:.1f}x vs teacher eager" if "vs_teacher_eager" in sp else None,
                     f"{sp['vs_teacher_int8']:.1f}x vs teacher int8 (NNCF)" if "vs_teacher_int8" in sp else None]
            lines += ["", f"Shipped artifact p90 speed-up: {', '.join(p for p in parts if p)}"]
        lines.append("")
    lines += ["## Stages", "", "| stage | cached | seconds | summary |", "|---|---|---|---|"]
    for s in report["stages"]:
        summary = ", ".join(f"{k}={_compact(v)}" for k, v in s["summary"].items())
        lines.append(f"| {s['stage']} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {summary} |")
    return "\n".join(lines) + "\n"


def _compact(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return f"[{len(v)} items]"
    return str(v)


def _plot(report: dict[str, Any]) -> bytes | None:
    from benchmarks.harness import BenchResult
    from benchmarks.report import pareto_plot
    from benchmarks.stats import LatencyStats

    results = []
    for r in report["artifacts"]:
        if r["accuracy"] is None:
            continue
        lat = LatencyStats(count=r["samples"], mean=r["p50_ms"], std=0.0, min=r["p50_ms"], max=r["p99_ms"],
                           p50=r["p50_ms"], p90=r["p90_ms"], p95=r["p90_ms"], p99=r["p99_ms"])
        results.append(BenchResult(artifact=r["role"], format=r["format"], runtime=r["runtime"],
                                   precision=r["precision"], batch=r["batch"] or 1, threads=r["threads"],
                                   latency_ms=lat, throughput=0.0, device=r["device"], accuracy=r["accuracy"]))
    return pareto_plot(results) if results else None


def write_reports(report: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    paths = {"json": write_json(run_dir / "report.json", report)}
    md = markdown(report)
    with atomic_path(run_dir / "report.md") as tmp:
        tmp.write_text(md)
    paths["md"] = run_dir / "report.md"
    png = _plot(report)
    img = (f'<img alt="accuracy vs p90 latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "<p>(no latency measured: add a bench stage)</p>")
    body = _md_to_html(md)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgetl run {html.escape(report['recipe']['name'])}"
            "</title><style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>"
            f"{body}<h2>Accuracy vs latency</h2>{img}</body></html>")
    with atomic_path(run_dir / "report.html") as tmp:
        tmp.write_text(page)
    paths["html"] = run_dir / "report.html"
    return paths


def _md_to_html(md: str) -> str:
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            text = html.escape(line).replace("**", "")
            out.append(f"<p>{text}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)
