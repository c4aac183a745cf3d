"""The one report of an ``edgetl run``: a typed :class:`RunReport`, rendered once into blocks that become
``report.md`` and a self-contained ``report.html``; ``report.json`` is its ``to_dict``.

It answers "which file do I ship": each row names its file relative to the run directory and the split its
accuracy comes from; the recommendation is the fastest (by median latency) *deployable* artifact (an exported
file, not the PyTorch model in memory) within the accuracy budget (``budgets.max_accuracy_drop``, 1 point when the recipe sets none)
whose stage passed its quality gate, with one sentence of why, or says plainly that no artifact met the budget.
Warnings collect what a reader must know before trusting a number: contended timings, budgets missed,
relevance not conserved, stages skipped. Speed-ups keep three significant digits (never "0.0x").

Example::

    report = build_run_report(ctx, outcomes, search=[], chosen_ratio=None, budget_met=None)
    render(report, "md")             # or "html", "json"
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.fileio import atomic_path, write_json

__all__ = ["DEFAULT_DROP", "ReportRow", "RunReport", "build_report", "build_run_report", "render", "write_reports"]

DEFAULT_DROP = 1.0
_CONSERVATION_OK = (0.9, 1.1)  # LRP: share of the seeded relevance reaching the input


@dataclass(frozen=True)
class ReportRow:
    """One measured artifact on one device, with the real statistics of its benchmark (never rebuilt)."""

    role: str
    device: str
    result: dict[str, Any]  # the BenchResult as measured (benchmarks.harness.BenchResult.to_dict())
    file: str | None  # relative to the run directory where it lies inside it
    accuracy: float | None
    accuracy_split: str
    agreement: float | None = None
    params: int | None = None
    flops: int | None = None
    fidelity: dict[str, Any] | None = None  # scored against the source: the headline and every output's figures

    @property
    def deployable(self) -> bool:
        """An exported file a device can load; the PyTorch model in memory (eager) is a baseline only."""
        return self.result.get("format") != "torch" and self.file is not None

    @property
    def contended(self) -> bool:
        return bool(self.result.get("contended"))

    def flat(self) -> dict[str, Any]:
        r, lat = self.result, self.result["latency_ms"]
        return {"role": self.role, "device": self.device, "artifact": r["artifact"], "file": self.file,
                "format": r["format"], "runtime": r["runtime"], "precision": r["precision"],
                "accuracy": self.accuracy, "accuracy_split": self.accuracy_split, "agreement": self.agreement,
                "params": self.params, "flops": self.flops, "size_bytes": r.get("model_size_bytes"),
                "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "samples": lat["count"],
                "threads": r.get("threads"), "batch": r.get("batch"), "deployable": self.deployable,
                "contended": self.contended, "emulated": r.get("emulated"), "fidelity": self.fidelity, "result": r}


@dataclass(frozen=True)
class RunReport:
    recipe: dict[str, Any]
    fingerprint: str
    run_dir: str
    model: str | None
    data: str | None
    stages: list[dict[str, Any]]
    rows: list[ReportRow]
    budget_points: float
    blocked_roles: tuple[str, ...] = ()  # roles whose stage failed its gate: never recommended
    search: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)  # edgetl.gates.Verdict.to_dict() of each stage judged
    metric: dict[str, Any] | None = None  # edgetl.run_task.RunMetric.to_dict(): what every score is (None: top-1)

    def recommendation(self) -> dict[str, Any] | None:
        from edgetl.run_choose import recommend

        return recommend(self.rows, self.budget_points, set(self.blocked_roles), self.metric)

    def to_dict(self) -> dict[str, Any]:
        from edgetl.run_choose import speedups

        d = {"recipe": self.recipe, "fingerprint": self.fingerprint, "run_dir": self.run_dir, "model": self.model,
             "data": self.data, "stages": self.stages, "artifacts": [r.flat() for r in self.rows],
             "recommendation": self.recommendation(), "accuracy_budget_points": self.budget_points,
             "blocked_roles": list(self.blocked_roles), "warnings": self.warnings, "gates": self.gates,
             "speedups": speedups(self), "metric": self.metric or _labels_metric()}
        if self.search is not None:
            d["budget"] = self.search
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        rows = [ReportRow(role=a["role"], device=a["device"], result=a["result"], file=a.get("file"),
                          accuracy=a.get("accuracy"), accuracy_split=a.get("accuracy_split", "test"),
                          agreement=a.get("agreement"), params=a.get("params"), flops=a.get("flops"),
                          fidelity=a.get("fidelity"))
                for a in d["artifacts"]]
        return cls(recipe=d["recipe"], fingerprint=d["fingerprint"], run_dir=d["run_dir"], model=d.get("model"),
                   data=d.get("data"), stages=d["stages"], rows=rows, budget_points=d["accuracy_budget_points"],
                   blocked_roles=tuple(d.get("blocked_roles", ())), search=d.get("budget"),
                   warnings=list(d.get("warnings", [])), gates=list(d.get("gates", [])),
                   metric=d.get("metric") if (d.get("metric") or {}).get("reference") == "source" else None)


def _labels_metric() -> dict[str, Any]:
    from edgetl.run_task import LABELS_METRIC

    return LABELS_METRIC.to_dict()


# --------------------------------------------------------------------------- building
def _rel(path: str | None, run_dir: Path) -> str | None:
    if not path:
        return None
    from edgetl.fileio import final_path

    p = final_path(path)  # a file recorded while its stage directory was still the temporary one
    try:
        return str(p.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(p)  # outside the run directory (the user's own model): as given


def build_run_report(ctx, outcomes, *, search, chosen_ratio, budget_met, gates=()) -> RunReport:
    """The typed report of one run; ``gates`` are :class:`edgetl.gates.Verdict`s the pipeline applied."""
    recipe, run_dir = ctx.recipe, Path(ctx.run_dir)
    stages = [{"stage": o.kind, "key": o.key, "cached": o.cached, "seconds": round(o.seconds, 2),
               "directory": _rel(str(o.directory), run_dir), "summary": _short(o.kind, o.summary)}
              for o in outcomes]
    split = f"{getattr(ctx.data, 'name', recipe.data)} test split"
    rows = []
    bench = next((o for o in outcomes if o.kind == "bench"), None)
    for item in (bench.summary.get("results", []) if bench is not None else []):
        r = item["result"]
        rows.append(ReportRow(role=item["role"], device=item["device"], result=r,
                              file=_rel(r.get("path"), run_dir), accuracy=r.get("accuracy"),
                              accuracy_split=r.get("accuracy_source") or split, agreement=item.get("agreement"),
                              params=(item.get("cost") or {}).get("params"),
                              flops=(item.get("cost") or {}).get("flops"), fidelity=item.get("fidelity")))
    budget = recipe.budgets.max_accuracy_drop if recipe.budgets.max_accuracy_drop is not None else DEFAULT_DROP
    blocked = tuple(_blocked_roles(gates))
    report = RunReport(recipe=recipe.to_dict(), fingerprint=recipe.fingerprint(), run_dir=str(run_dir),
                       model=recipe.model, data=recipe.data, stages=stages, rows=rows, budget_points=budget,
                       blocked_roles=blocked, gates=[v.to_dict() for v in gates], metric=_task_metric(ctx.data),
                       search=_search_block(recipe, search, chosen_ratio, budget_met, _task_metric(ctx.data)))
    report.warnings.extend(_warnings(report, outcomes, gates))
    return report


def _task_metric(data) -> dict[str, Any] | None:
    """A run scored against its source: the metric, with the split sizes and where the inputs came from."""
    from edgetl.run_task import TaskSplits

    if not isinstance(data, TaskSplits):
        return None
    return {**data.metric.to_dict(), "task": data.contract.task.value, "samples": data.sizes, "seed": data.seed}


def build_report(ctx, outcomes, *, search, chosen_ratio, budget_met, gates=()) -> dict[str, Any]:
    """:func:`build_run_report` as the dict ``report.json`` holds (what ``run_recipe`` returns)."""
    return build_run_report(ctx, outcomes, search=search, chosen_ratio=chosen_ratio, budget_met=budget_met,
                            gates=gates).to_dict()


def _blocked_roles(gates) -> list[str]:
    by_stage = {"quantize": "quantized", "prune": "compressed", "distill": "compressed"}
    return [by_stage[v.stage] for v in gates if not v.allowed and v.stage in by_stage] + \
        [f"export:{v.stage.split(':', 1)[1]}" for v in gates if not v.allowed and v.stage.startswith("export:")]


def _search_block(recipe, search, chosen_ratio, budget_met, metric=None) -> dict[str, Any] | None:
    if not search:
        return None
    b = recipe.budgets
    if budget_met:
        msg = f"budget met at pruning ratio {chosen_ratio}"
    else:
        given = ", ".join(f"{k}={v}" for k, v in (("max_accuracy_drop", b.max_accuracy_drop),
                                                  ("target_latency_ms", b.target_latency_ms)) if v is not None)
        best = max(search, key=lambda t: t["val_accuracy"])
        extra = f", p90 {best['p90_ms']:.3f} ms" if "p90_ms" in best else ""
        of = f" of {metric['label'].removesuffix(' %')}" if metric else ""
        msg = (f"budget unreachable: no pruning ratio tried met {given}; best reached: ratio {best['ratio']}: "
               f"drop {best['drop_points']:.2f} points{of} (val split){extra}")
    return {"met": budget_met, "ratio": chosen_ratio, "tried": search, "message": msg}


_KEEP = ("params", "flops", "macs", "accuracy", "val_accuracy", "test_accuracy", "accuracy_before", "accuracy_after",
         "agreement", "ratio", "size_bytes", "exports", "best_val_accuracy", "epochs_run", "kept_in_float",
         "scoring_cost_ratio", "params_before", "params_after", "flops_before", "flops_after", "fp32_accuracy",
         "drop_points", "val_accuracy_before", "val_accuracy_after", "fp32_size_bytes")


def _short(kind: str, summary: dict[str, Any]) -> dict[str, Any]:
    if kind == "bench":
        return {"measured": len(summary.get("results", []))}
    out = {k: v for k, v in summary.items() if k in _KEEP}
    lat = summary.get("latency_target")
    if lat:  # a prune stage with target_latency_ms: predicted against measured
        out["latency_target"] = {k: lat.get(k) for k in ("target_ms", "predicted_ms", "measured_p50_ms",
                                                         "unpruned_p50_ms", "met", "device", "runtime", "precision",
                                                         "threads")}
        out["latency_target"]["iterations"] = len(lat.get("iterations") or ())
    if kind == "quantize" and "accuracy" in out:  # the quantizer measures on its eval split (val by default)
        out["split"] = summary.get("split", "val")
    return out


def _warnings(report: RunReport, outcomes, gates) -> list[str]:
    out = []
    contended = [r for r in report.rows if r.contended]
    if contended:
        worst = max((r.result.get("contention") or {}).get("others_cores_max") or 0 for r in contended)
        out.append(f"{len(contended)} of {len(report.rows)} timings were measured under contention (other "
                   f"processes used up to {worst:.2f} cores): their latencies are inflated and the speed-ups "
                   "between them are not reliable; rerun the bench stage on an idle machine")
    out += [v.line() for v in gates if not v.passed]
    out += _skipped(report, outcomes, gates)
    out += [f"quantize: {o.summary['size_note']}" for o in outcomes if o.kind == "quantize" and o.summary.get("size_note")]
    for o in outcomes:
        for s in (o.summary.get("scoring") or []) if o.kind == "prune" else []:
            c = (s.get("conservation") or {}).get("input_over_seed") if isinstance(s, dict) else None
            if c is not None and not _CONSERVATION_OK[0] <= c <= _CONSERVATION_OK[1]:
                out.append(f"prune: only {100 * c:.0f} % of the seeded LRP relevance reached the input (conserved "
                           "is 100 %): the channel scores are less trustworthy for this architecture")
    formats = {e.get("format") for o in outcomes if o.kind == "export" for e in o.summary.get("exports", [])}
    if "tensorrt" in formats or "tensorrt-bundle" in formats:
        out.append("export: the TensorRT bundle is built into an engine on its device; it was not measured here "
                   "(edgetl bench --host user@board)")
    if not report.rows:
        out.append("no bench stage ran: no latency was measured, so nothing is recommended")
    out += [f"{r.role}: {r.result['emulated']}" for r in report.rows if r.result.get("emulated")]
    return out


def _skipped(report: RunReport, outcomes, gates) -> list[str]:
    """The stages a failed prune/distill gate skipped (the compressed branch stops there)."""
    stopped = next((v for v in gates if not v.allowed and v.stage in ("prune", "distill")), None)
    if stopped is None:
        return []
    ran = {o.kind for o in outcomes}
    skipped = [k for k in (next(iter(s)) for s in report.recipe["stages"]) if k not in ran and k != "package"]
    if not skipped:
        return []
    return [f"stage{'s' if len(skipped) > 1 else ''} {', '.join(skipped)} skipped: the {stopped.stage} output failed "
            "its quality gate, so nothing was built on it; the rows measured are the teacher and its baselines"]


# --------------------------------------------------------------------------- rendering: one set of blocks
_COLS = [("role", "role"), ("file", "file"), ("format", "format"), ("runtime", "runtime"),
         ("precision", "precision"), ("accuracy", "top-1 %"), ("agreement", "agree %"), ("params", "params"),
         ("flops", "FLOPs"), ("size_bytes", "size KiB"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"),
         ("p99_ms", "p99 ms"), ("samples", "n"), ("timing", "timing")]


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


def _blocks(rep: RunReport) -> list[tuple]:
    from benchmarks.report import format_ratio

    d = rep.to_dict()
    out: list[tuple] = [("h1", f"edgetl run: {rep.recipe['name']}"),
                        ("p", f"model {rep.model} on {rep.data}; recipe fingerprint {rep.fingerprint}; files are "
                              f"relative to {rep.run_dir}")]
    rec = d["recommendation"]
    if rec:
        out.append(("p", f"**Recommendation:** {rec['line']}"))
    if rep.search:
        out.append(("p", f"**Budget:** {rep.search['message']}"))
    if rep.warnings:
        out += [("h2", "Warnings"), ("ul", list(rep.warnings))]
    if rep.gates:
        out += [("h2", "Quality gates"), ("ul", [("PASS " if g["passed"] else "FAIL ") + g["line"] for g in rep.gates])]
    heads = [rep.metric["label"] if k == "accuracy" and rep.metric else h for k, h in _COLS]
    said = f"{rep.metric['label'].removesuffix(' %')} (headline output {rep.metric.get('output')})" if rep.metric \
        else "top-1 and agreement"
    for device in dict.fromkeys(r.device for r in rep.rows):
        rows = [r.flat() for r in rep.rows if r.device == device]
        splits = sorted({r["accuracy_split"] for r in rows if r["accuracy"] is not None})
        table = [[_fmt(k, r.get(k)) if k != "timing" else ("contended" if r["contended"] else "clean")
                  for k, _ in _COLS] for r in rows]
        out += [("h2", device), ("table", heads, table),
                ("p", f"{said}: {'; '.join(splits) or 'not measured'}. Latency: batch 1, "
                      f"single stream; the recommendation is ranked by {_basis(rec, device)}, p90 the headline.")]
        out += _fidelity_blocks(rows)
        sp = d["speedups"].get(device)
        if sp:
            parts = [f"{format_ratio(sp[k])} {label}" for k, label in
                     (("vs_teacher_eager", "vs teacher eager"), ("vs_teacher_fp32_export", "vs teacher fp32 export"),
                      ("vs_teacher_int8", "vs teacher int8 (NNCF)")) if k in sp]
            if sp["reliable"]:
                out.append(("p", f"Shipped artifact p90 speed-up: {', '.join(parts)}"))
            else:
                out.append(("p", f"Speed-up not headlined (contended timings): {', '.join(parts)}"))
    out += _latency_blocks(rep)
    out += [("h2", "Stages"), ("table", ["stage", "cached", "seconds", "directory", "summary"],
             [[s["stage"], "yes" if s["cached"] else "no", f"{s['seconds']:.1f}", s["directory"] or "-",
               ", ".join(f"{k}={_compact(v)}" for k, v in s["summary"].items())] for s in rep.stages])]
    return out


def _basis(rec: dict[str, Any] | None, device: str) -> str:
    """What ranked the recommendation on ``device`` (edgetl.run_choose), in words."""
    return rec.get("basis", "p50") if rec and rec.get("device") == device else "p50"


def _fidelity_blocks(rows: list[dict[str, Any]]) -> list[tuple]:
    """Every output's cosine and SNR against the source, per artifact (a model scored through its contract)."""
    scored = [r for r in rows if r.get("fidelity")]
    if not scored:
        return []
    names = list(scored[0]["fidelity"]["outputs"])
    table = [[r["role"], *(f"{_fmt('cos', (r['fidelity']['outputs'].get(n) or {}).get('cosine'))} / "
                          f"{_fmt('snr', (r['fidelity']['outputs'].get(n) or {}).get('snr_db'))}" for n in names)]
             for r in scored]
    return [("table", ["role", *(f"{n}: cosine / SNR dB" for n in names)], table)]


def _latency_blocks(rep: RunReport) -> list[tuple]:
    """Predicted against measured latency of each stage that pruned to a latency target."""
    out: list[tuple] = []
    for s in rep.stages:
        lat = s["summary"].get("latency_target")
        if not lat:
            continue
        out.append(("p", f"**Latency target ({s['stage']}):** p50 {lat['target_ms']:.4g} ms at batch 1 on "
                         f"{lat['runtime']} {lat['precision']} ({lat['device']}, {lat['threads']} threads): predicted "
                         f"{lat['predicted_ms']:.4g} ms, measured {lat['measured_p50_ms']:.4g} ms "
                         f"({'met' if lat['met'] else 'missed'} after {lat['iterations']} iteration(s)); unpruned "
                         f"{lat['unpruned_p50_ms']:.4g} ms. Measured during the run, not on a quiet machine: see the "
                         "bench rows for the interleaved figures"))
    return out


def _compact(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return f"[{len(v)} items]"
    return str(v)


def _md(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "ul":
            lines += [f"- {x}" for x in b[1]] + [""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b[2]] + [""]
    return "\n".join(lines)


def _html(blocks: list[tuple], png: bytes | None, title: str) -> str:
    e = html.escape
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            text = e(b[1])
            body.append("<p>" + (text.replace("**", "<b>", 1).replace("**", "</b>", 1) if "**" in text else text)
                        + "</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    img = (f'<img alt="accuracy vs p90 latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "<p>(no latency measured: add a bench stage)</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>body{{font-family:"
            "sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 6px;font-size:13px}</style></head><body>" + "\n".join(body)
            + f"<h2>Accuracy vs latency</h2>{img}</body></html>")


def _plot(rep: RunReport) -> bytes | None:
    import dataclasses

    from benchmarks.harness import BenchResult
    from benchmarks.report import pareto_plot

    results = [dataclasses.replace(BenchResult.from_dict(r.result), artifact=r.role, accuracy=r.accuracy)
               for r in rep.rows if r.accuracy is not None]
    return pareto_plot(results) if results else None


def render(report: RunReport | dict[str, Any], fmt: str, *, plot: bool = True) -> str:
    """The report as ``md``, ``html`` (plot embedded) or ``json`` text."""
    rep = report if isinstance(report, RunReport) else RunReport.from_dict(report)
    if fmt == "json":
        return json.dumps(rep.to_dict(), indent=2, default=str) + "\n"
    if fmt == "md":
        return _md(_blocks(rep))
    if fmt == "html":
        return _html(_blocks(rep), _plot(rep) if plot else None, f"edgetl run {rep.recipe['name']}")
    from edgetl.errors import UnknownNameError

    raise UnknownNameError("report format", fmt, ["md", "html", "json"])


def write_reports(report: RunReport | dict[str, Any], run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` (each atomically) into ``run_dir``."""
    rep = report if isinstance(report, RunReport) else RunReport.from_dict(report)
    run_dir = Path(run_dir)
    paths = {"json": write_json(run_dir / "report.json", rep.to_dict())}
    for fmt, name in (("md", "report.md"), ("html", "report.html")):
        with atomic_path(run_dir / name) as tmp:
            tmp.write_text(render(rep, fmt), encoding="utf-8")
        paths[fmt] = run_dir / name
    return paths
