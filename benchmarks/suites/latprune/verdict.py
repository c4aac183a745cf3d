"""The interleaved measurement of a section, the issue's checks on it, and the table and plot.

Checks (issue #15, "Done when"), judged on int8 OpenVINO p50s measured in the same interleaved rounds:

(a) latency-budgeted LRP against FLOPs-targeted LRP, at every FLOPs point F: "same latency" is the most accurate
    latency point measured no slower than F (it must keep >= 1 point more), "same accuracy" is the fastest
    latency point at least as accurate as F (it must be >= 1.3x faster, median of per-round ratios). MET only
    when one of the two holds at every FLOPs point.
(b) the fastest edgetl point (either kind) whose score is within 1 point of the teacher (the higher of its fp32
    and int8 score) against the teacher's int8: >= ``need`` x faster (2 at 64x64, 1.5 at 160/224).

A row timed under contention is flagged and a check resting on it says so: it is not a result.
"""

from __future__ import annotations

from typing import Any

from benchmarks.interleave import speedup


def measure_points(points: list[dict], *, threads: int, rounds: int, min_time: float, quick: bool,
                   pause: tuple[int, ...] = ()) -> dict[str, Any]:
    """Every point's int8 IR measured in interleaved rounds, alone on the machine; the teacher is the baseline."""
    from benchmarks.harness import BenchConfig
    from benchmarks.interleave import Candidate, InterleaveConfig, measure_interleaved
    from benchmarks.profiles import load_profile
    from benchmarks.quiet import quiet_machine
    from edgetl.models import load_model

    rows = [p for p in points if p.get("int8_path")]
    cands = [Candidate(artifact=load_model(p["int8_path"]), label=p["name"]) for p in rows]
    cfg = BenchConfig(threads=threads, runtime="openvino", min_time_s=min_time, min_count=30 if quick else 200,
                      warmup_s=0.1 if quick else 0.5)
    with quiet_machine(pause=pause) as q:
        run = measure_interleaved(cands, cfg, profile=load_profile("x86-cpu"), baseline=0,
                                  interleave=InterleaveConfig(rounds=rounds))
    out = {}
    for p, res in zip(rows, run.results, strict=True):
        out[p["name"]] = {
            "p50_ms": res.latency_ms.p50, "p90_ms": res.latency_ms.p90, "count": res.latency_ms.count,
            "runtime_p50_ms": res.runtime_latency_ms.p50 if res.runtime_latency_ms else None,
            "precision": res.precision, "contended": res.contended, "contention": res.contention,
            "rounds": [{k: r[k] for k in ("p50_ms", "contended", "reasons")} for r in res.rounds],
            "speedup_vs_teacher_int8": res.speedup, "warnings": res.warnings}
    return {"rounds_run": run.rounds, "extra_rounds": run.extra_rounds, "quiet": q.to_dict(),
            "config": {"threads": threads, "rounds": rounds, "min_time_s": min_time, "batch": 1,
                       "runtime": "openvino", "precision": "int8 (NNCF)"}, "points": out}


def _pair_ratio(m: dict, slow: str, fast: str) -> dict[str, Any]:
    """Median over clean shared rounds of slow/fast p50 (above 1: ``fast`` is faster)."""
    a, b = m["points"][slow]["rounds"], m["points"][fast]["rounds"]
    clean = [i for i in range(min(len(a), len(b))) if not (a[i]["contended"] or b[i]["contended"])]
    contended = len(clean) < m["config"]["rounds"]
    use = clean if not contended else list(range(min(len(a), len(b))))
    return speedup([a[i]["p50_ms"] for i in use], [b[i]["p50_ms"] for i in use], max_spread=0.25,
                   contended=contended)


def check_a(points: list[dict], m: dict, metric: str) -> dict[str, Any]:
    flops = [p for p in points if p["kind"] == "flops" and p["name"] in m["points"]]
    not_built = [p["name"] for p in points if "missed" in p]
    lat = [p for p in points if p["kind"] == "latency" and p["name"] in m["points"]]
    p50 = {k: v["p50_ms"] for k, v in m["points"].items()}
    per = []
    for f in flops:
        same_lat = [x for x in lat if p50[x["name"]] <= p50[f["name"]]]
        best = max(same_lat, key=lambda x: x[metric], default=None)
        gain = None if best is None else 100 * (best[metric] - f[metric])
        same_acc = [x for x in lat if x[metric] >= f[metric]]
        fastest = min(same_acc, key=lambda x: p50[x["name"]], default=None)
        ratio = None if fastest is None else _pair_ratio(m, f["name"], fastest["name"])
        met = (gain is not None and gain >= 1.0) or (ratio is not None and ratio["ratio"] >= 1.3)
        per.append({"flops_point": f["name"], "same_latency_point": best and best["name"],
                    "points_gained_at_same_latency": gain, "same_accuracy_point": fastest and fastest["name"],
                    "speedup_at_same_accuracy": ratio, "met": met})
    ok = bool(per) and all(x["met"] for x in per)
    unreliable = [x["flops_point"] for x in per if x["speedup_at_same_accuracy"]
                  and not x["speedup_at_same_accuracy"]["reliable"]]
    return {"check": "a", "verdict": "MET" if ok else "MISSED", "met_at": sum(x["met"] for x in per),
            "of": len(per), "per_flops_point": per, "unreliable_ratios": unreliable, "not_built": not_built,
            "rule": "at every FLOPs point: >= 1 point more at no higher measured p50, or >= 1.3x faster at no "
                    "lower score"}


def check_b(points: list[dict], m: dict, metric: str, need: float) -> dict[str, Any]:
    teacher = next(p for p in points if p["kind"] == "teacher")
    ref = max(teacher[metric], teacher.get(f"{metric}_fp32", teacher[metric]))
    close = [p for p in points if p["kind"] != "teacher" and p["name"] in m["points"] and p[metric] >= ref - 0.01]
    best = min(close, key=lambda p: m["points"][p["name"]]["p50_ms"], default=None)
    sp = m["points"][best["name"]]["speedup_vs_teacher_int8"] if best else None
    ok = sp is not None and sp["ratio"] >= need
    return {"check": "b", "verdict": "MET" if ok else "MISSED", "need": need, "reference_score": ref,
            "best_point": best and best["name"], "best_score": best and best[metric], "speedup": sp,
            "reliable": bool(sp and sp["reliable"]),
            "rule": f"fastest edgetl point within 1 point of the teacher (the higher of its fp32 and int8 score) "
                    f">= {need}x faster than the teacher's int8, median of per-round ratios"}


def fastest_possible(points: list[dict], m: dict) -> float | None:
    p = [m["points"][x["name"]]["p50_ms"] for x in points if x["kind"] != "teacher" and x["name"] in m["points"]]
    return min(p) if p else None


# --------------------------------------------------------------------------- rendering
def _fmt(v, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def section_markdown(sec: dict) -> list[str]:
    metric, m = sec["metric"], sec.get("measure")
    head = f"## {sec['key'].upper()}. {sec['title']}"
    lines = [head, "", sec["note"], "", f"Recovery (every pruned point): {sec['recovery']}.", ""]
    if sec.get("teacher_note"):
        lines += [sec["teacher_note"], ""]
    cols = f"| point | target | params | MFLOPs | {metric} fp32 | {metric} int8 | int8 p50 ms | p90 ms | x teacher int8 | contended rounds |"
    lines += [cols, "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sec["points"]:
        if "missed" in p:
            lines.append(f"| {p['name']} | {p['target']:.3f} ms | - | - | - | - | - | - | - | not built "
                         f"({p.get('max_iterations', 4)} iterations): {p['missed'][:160]} |")
            continue
        mp = (m or {}).get("points", {}).get(p["name"])
        tgt = "-" if p["target"] is None else (f"{p['target']:.3f} ms" if p["kind"] == "latency"
                                               else f"{100 * p['target']:.0f} % FLOPs")
        sp = mp and mp["speedup_vs_teacher_int8"]
        cont = "-" if not mp else f"{mp['contention']['contended_rounds']}/{mp['contention']['rounds']}"
        lines.append(f"| {p['name']} | {tgt} | {p['params']:,} | {p['flops'] / 1e6:.1f} | "
                     f"{_fmt(p.get(metric + '_fp32'), '.2f', 100)} | {_fmt(p[metric], '.2f', 100)} | "
                     f"{_fmt(mp and mp['p50_ms'], '.3f')} | {_fmt(mp and mp['p90_ms'], '.3f')} | "
                     f"{'1 (baseline)' if p['kind'] == 'teacher' and mp else _fmt(sp and sp['ratio'], '.2f')}"
                     f"{'' if not sp or sp['reliable'] else ' (unreliable: ' + sp['unreliable_because'] + ')'} | "
                     f"{cont}{' CONTENDED: not a result' if mp and mp['contended'] else ''} |")
    for p in sec["points"]:
        for e in p.get("earlier_attempts", []):
            lines.append(f"- {p['name']}, an earlier attempt with {e.get('max_iterations', 4)} iterations: "
                         f"{e['missed'][:220]}")
        fit = p.get("latency_fit")
        if fit:
            its = "; ".join(f"#{i['iteration']} budget {i['budget_ms']:.3f}, predicted {i['predicted_ms']:.3f}, "
                            f"measured {i['measured_ms']:.3f}" for i in fit["iterations"])
            lines.append(f"- {p['name']}: target {fit['target_ms']:.3f} ms on the {fit.get('latency_model', 'isolated-table')}"
                         f" model, predicted {fit['predicted_ms']:.3f}, measured {fit['measured_p50_ms']:.3f} before "
                         f"recovery (unpruned {fit['unpruned_p50_ms']:.3f} ms; iterations: {its})")
    for c in sec.get("checks", []):
        lines += ["", _check_line(c, metric)]
    if m:
        lines += ["", f"Measured: {m['rounds_run']} interleaved rounds ({m['extra_rounds']} extra), "
                  f"{m['config']['min_time_s']} s per artifact, batch 1, {m['config']['threads']} threads, OpenVINO "
                  + (f"int8; quiet machine (waited {m['quiet']['waited_s']:.0f} s for the lock, held "
                     f"{m['quiet']['held_s']:.0f} s)." if m["quiet"].get("mode", "held") == "held"
                     else "int8; the quiet lock was OFF (smoke): the machine was shared.")]
    return lines + [""]


def _check_line(c: dict, metric: str) -> str:
    if c["check"] == "a":
        parts = []
        for x in c["per_flops_point"]:
            g = x["points_gained_at_same_latency"]
            r = x["speedup_at_same_accuracy"]
            parts.append(f"{x['flops_point']}: {'+' if g is not None and g >= 0 else ''}"
                         f"{_fmt(g, '.2f')} pt at same latency ({x['same_latency_point'] or 'no latency point as fast'}),"
                         f" {_fmt(r and r['ratio'], '.2f')}x at same {metric} ({x['same_accuracy_point'] or 'none as good'})"
                         f" -> {'met' if x['met'] else 'missed'}")
        return (f"**Check (a) {c['verdict']}** ({c['met_at']} of {c['of']} FLOPs points; rule: {c['rule']}): "
                + "; ".join(parts) + ".")
    sp = c["speedup"]
    return (f"**Check (b) {c['verdict']}** (need {c['need']}x; reference {metric} {100 * c['reference_score']:.2f} %): "
            + (f"best point within 1 pt is {c['best_point']} ({100 * c['best_score']:.2f} %), "
               f"{sp['ratio']:.2f}x the teacher's int8{'' if sp['reliable'] else ' (UNRELIABLE: ' + str(sp['unreliable_because']) + ')'}."
               if c["best_point"] else "no pruned point is within 1 point of the teacher."))


def plot(out: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [s for s in out["sections"] if s.get("measure")]
    if not secs:
        return
    fig, axes = plt.subplots(1, len(secs), figsize=(5.2 * len(secs), 4.2), squeeze=False)
    style = {"teacher": ("k", "*"), "flops": ("tab:blue", "o"), "latency": ("tab:red", "s")}
    for ax, s in zip(axes[0], secs, strict=True):
        metric = s["metric"]
        for kind, (color, marker) in style.items():
            pts = [p for p in s["points"] if p["kind"] == kind and p["name"] in s["measure"]["points"]]
            pts.sort(key=lambda p: s["measure"]["points"][p["name"]]["p50_ms"])
            xs = [s["measure"]["points"][p["name"]]["p50_ms"] for p in pts]
            ys = [100 * p[metric] for p in pts]
            ax.plot(xs, ys, color=color, marker=marker, linestyle="-" if kind != "teacher" else "none",
                    label={"teacher": "teacher int8", "flops": "LRP, FLOPs target",
                           "latency": "LRP, latency target"}[kind])
        ax.set_xlabel("measured int8 p50, ms (OpenVINO, batch 1)")
        ax.set_ylabel(f"{metric} %, int8")
        ax.set_title(s["title"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Latency-budgeted vs FLOPs-targeted LRP{' (SMOKE: no claims)' if out['smoke'] else ''}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
