"""Benchmark reports: a Markdown table and a self-contained HTML page with embedded plots.

Plots (matplotlib, PNG embedded as base64 so the page is one file to mail or attach):

- latency per artifact (format / runtime / precision) per device: p50 bar, p90 tick, whisker to p99;
- accuracy vs p90 latency (Pareto) when accuracy is known, with each device's Pareto front: the models no
  other model beats on both latency and accuracy.

Example::

    paths = write_report(ResultsStore().results(), "report/")
    paths["html"]
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchResult
from edgetl.errors import ConfigError
from edgetl.fileio import atomic_path

__all__ = ["format_ratio", "latency_plot", "markdown_table", "pareto_front", "pareto_plot", "speedup_cell",
           "write_report"]


def format_ratio(x: float | None) -> str:
    """A speed-up with three significant digits, never rounded to nothing: 0.0012 -> "0.00120x", 12.34 -> "12.3x"."""
    if x is None:
        return "-"
    if x != x or x in (float("inf"), float("-inf")):
        return f"{x}x"
    return f"{x:.3g}x" if abs(x) < 1000 else f"{x:,.0f}x"


def speedup_cell(r) -> str:
    """The speed-up of a result over its baseline as a table cell: "base" for the baseline itself, the ratio
    with "(unreliable)" when its rounds disagree or were contended, "-" when not measured interleaved."""
    sp = getattr(r, "speedup", None)
    if sp is None:
        return "base" if getattr(r, "rounds", None) else "-"
    return format_ratio(sp["ratio"]) + ("" if sp["reliable"] else " (unreliable)")

_COLUMNS = ["device", "host", "artifact", "format", "runtime", "precision", "batch", "threads", "p50 ms", "p90 ms",
            "p99 ms", "n", "cold start ms", "peak MB", "size MB", "accuracy %", "vs base", "timing"]


def timing_cell(r: BenchResult) -> str:
    """How far the row's latency can be trusted: contended, emulated on another machine, or clean."""
    marks = [m for m in ("contended" if r.contended else None, r.emulated) if m]
    return "; ".join(marks) or "clean"


def _row(r: BenchResult) -> list[str]:
    s = r.latency_ms

    def opt(v, fmt):
        return fmt.format(v) if v is not None else "-"

    return [r.device, r.host, r.artifact, r.format, r.runtime, r.precision, str(r.batch), str(r.threads or "-"),
            f"{s.p50:.3f}", f"**{s.p90:.3f}**", f"{s.p99:.3f}", str(s.count), opt(r.cold_start_ms, "{:.0f}"),
            opt(r.peak_rss_delta_mb, "{:.0f}"), opt(r.model_size_bytes / 1e6 if r.model_size_bytes else None, "{:.2f}"),
            opt(100 * r.accuracy if r.accuracy is not None else None, "{:.2f}"), speedup_cell(r), timing_cell(r)]


def markdown_table(results: Sequence[BenchResult]) -> str:
    """A GitHub-flavoured Markdown table, one row per result, p90 (the headline) in bold."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for r in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _row(r)) + " |")
    return "\n".join(lines) + "\n"


def _label(r: BenchResult) -> str:
    return f"{r.artifact} · {r.runtime} · {r.precision}" + (f" · b{r.batch}" if r.batch != 1 else "")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _device_keys(results: Sequence[BenchResult]) -> list[str]:
    return sorted({f"{r.device} @ {r.host}" for r in results})


def latency_plot(results: Sequence[BenchResult]) -> bytes:
    """Horizontal bars of p50 per artifact/runtime/precision, p90 marked, whisker to p99; one panel per device."""
    from matplotlib.figure import Figure

    if not results:
        raise ConfigError("no results to plot")
    devices = _device_keys(results)
    rows = {d: [r for r in results if f"{r.device} @ {r.host}" == d] for d in devices}
    heights = [max(1.2, 0.38 * len(rows[d]) + 0.8) for d in devices]
    fig = Figure(figsize=(9, sum(heights) + 0.3))
    axes = fig.subplots(len(devices), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, d in zip(axes, devices, strict=True):
        rs = sorted(rows[d], key=lambda r: r.latency_ms.p90, reverse=True)
        ys = range(len(rs))
        p50 = [r.latency_ms.p50 for r in rs]
        ax.barh(ys, p50, color=["#4c72b0" if r.precision.startswith("fp32") else "#dd8452" for r in rs],
                alpha=0.85, label="p50")
        ax.errorbar(p50, ys, xerr=[[0] * len(rs), [r.latency_ms.p99 - r.latency_ms.p50 for r in rs]],
                    fmt="none", ecolor="#333", capsize=3, lw=1, label="to p99")
        ax.scatter([r.latency_ms.p90 for r in rs], ys, marker="|", s=160, color="k", zorder=3, label="p90")
        for y, r in zip(ys, rs, strict=True):
            ax.text(r.latency_ms.p99, y, f"  {r.latency_ms.p90:.2f} ms", va="center", fontsize=8)
        ax.set_yticks(list(ys), [_label(r) for r in rs], fontsize=8)
        ax.set_title(d, fontsize=10, loc="left")
        ax.set_xlabel("latency per call, ms (bar p50, tick p90, whisker p99)", fontsize=8)
        hi, lo = max(r.latency_ms.p99 for r in rs), min(r.latency_ms.p50 for r in rs)
        if hi / max(lo, 1e-9) > 30:  # one slow runtime would flatten the rest: log scale
            ax.set_xscale("log")
            ax.set_xlim(lo / 2, hi * 3)
        else:
            ax.set_xlim(0, hi * 1.3)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return _png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower latency, higher accuracy),
    ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(results: Sequence[BenchResult]) -> bytes | None:
    """Accuracy vs p90 latency per device with its Pareto front; None when no result has an accuracy."""
    from matplotlib.figure import Figure

    known = [r for r in results if r.accuracy is not None]
    if not known:
        return None
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    for dev, d in enumerate(_device_keys(known)):
        rs = [r for r in known if f"{r.device} @ {r.host}" == d]
        pts = [(r.latency_ms.p90, 100 * r.accuracy) for r in rs]
        c = colors[dev % len(colors)]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=c, s=40, label=d, zorder=3)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], drawstyle="steps-post", color=c, alpha=0.6,
                lw=1.5, marker="o", ms=11, mfc="none", label=f"{d}: Pareto front")
        for j, i in enumerate(front):  # only the front is labelled: the table names every point
            ax.annotate(f"{rs[i].artifact} [{rs[i].runtime}/{rs[i].precision}]", pts[i], textcoords="offset points",
                        xytext=(6, 6 + 11 * dev if j % 2 == 0 else -12 - 11 * dev), fontsize=7, color=c)
    xs = [r.latency_ms.p90 for r in known]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("p90 latency per call, ms (lower is better)")
    ax.set_ylabel("top-1 accuracy, % (higher is better)")
    ax.set_title("accuracy vs latency: each device's Pareto front (circled and labelled)", fontsize=10)
    ax.margins(y=0.15)  # room for the labels above the top points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _warning_lines(results: Sequence[BenchResult]) -> list[str]:
    out = [f"{r.device} @ {r.host}: {r.artifact}: {w}" for r in results for w in r.warnings]
    out += [f"{r.artifact}: speed-up vs {r.speedup['baseline']} unreliable ({r.speedup['unreliable_because']})"
            for r in results if r.speedup and not r.speedup.get("reliable", True)]
    return out


def _env_rows(results: Sequence[BenchResult]) -> list[list[str]]:
    seen: dict[tuple[str, str], list[str]] = {}
    for r in results:
        e = r.env
        v = e.get("versions", {})
        libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino", "executorch", "tensorrt") if k in v)
        seen[(r.device, r.host)] = [r.device, r.host, str(e.get("board") or e.get("cpu", "?")),
                                    f"{e.get('usable_cores', '?')}/{e.get('logical_cores', '?')}",
                                    str(e.get("power_mode") or e.get("cpu_governor") or "-"), libs or "-"]
    return list(seen.values())


def write_report(results: Sequence[BenchResult], out_dir: str | Path, *, title: str = "edgetl latency report",
                 command: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` (plots embedded) and the plot PNGs into ``out_dir`` (atomic files)."""
    results = list(results)
    if not results:
        raise ConfigError("no benchmark results to report; run `edgetl bench` first (or check --db / --device)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lat_png = latency_plot(results)
    par_png = pareto_plot(results)
    files: dict[str, Any] = {}
    for name, data in (("latency.png", lat_png), ("pareto.png", par_png)):
        if data is not None:
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(data)
            files[name.split(".")[0] + "_png"] = str(out / name)
    md = [f"# {title}", "", markdown_table(results)]
    warn = _warning_lines(results)
    if warn:
        md += ["## Warnings", "", *[f"- {w}" for w in warn], ""]
    md += ["Latency per call in ms, single stream: p90 is the headline (MLPerf single-stream), with p50, p99 and "
           "the sample count n. Cold start = load + first inference. Peak MB = RSS high-water mark over the "
           "pre-load RSS.", ""]
    md += ["![latency](latency.png)", ""] + (["![accuracy vs latency](pareto.png)", ""] if par_png else
                                             ["(no accuracy known: bench with --eval-data DATA for the Pareto plot)", ""])
    if command:
        md += [f"Command: `{command}`", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    files["markdown"] = str(out / "report.md")

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def htable(cols: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v)).replace('**', '')}</td>" for v in row) + "</tr>"
                       for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f2f2f2; }} td:nth-child(-n+6) {{ text-align: left; }}
td:nth-child(10) {{ font-weight: bold; }} img {{ max-width: 100%; }} .note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">Single-stream latency per call. p90 (bold) is the headline, as in MLPerf single-stream; p50, p99 and
the sample count n show the spread. Cold start = model load + first inference. Peak MB = RSS high-water mark over
the pre-load RSS. {len(results)} result(s).</p>
{htable(_COLUMNS, [_row(r) for r in results])}
{("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warn) + "</ul>") if warn else ""}
<h2>Latency per format and precision</h2>
{img(lat_png, "latency per artifact and device")}
<h2>Accuracy vs latency</h2>
{img(par_png, "accuracy vs latency Pareto plot") if par_png else
 '<p class="note">No accuracy known for these results: bench with --eval-data DATA.</p>'}
<h2>Environment</h2>
{htable(["device", "host", "cpu / board", "cores used/all", "power mode", "libraries"], _env_rows(results))}
{f'<p class="note">Command: <code>{html.escape(command)}</code></p>' if command else ''}
</body></html>
"""
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    files["html"] = str(out / "report.html")
    files["results"] = len(results)
    files["pareto"] = par_png is not None
    return files
