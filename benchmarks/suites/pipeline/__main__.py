"""Pipeline targets: is the shipped artifact >= 3x faster than NNCF int8 of the unpruned teacher on OpenVINO,
>= 20x faster than the teacher in PyTorch eager fp32, and within 1.0 point of the teacher's accuracy?

1. Runs (or resumes) a recipe on the reference teacher with ``edgetl run`` and takes its recommendation.
2. Measures, interleaved in one process (A B C A B C ..., ``--rounds`` times, median of the p90s), batch 1 and
   2 threads: the teacher in PyTorch eager fp32, NNCF int8 of the unpruned teacher on OpenVINO, and the shipped
   artifact, at the teacher's reference resolution and again at 224x224 (the models are rebuilt at that input
   size; latency only, since they were trained at the reference size).
3. Writes ``benchmarks/results/pipeline.{json,md}`` with the command.

It measures latency: run it alone on an idle machine::

    flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.pipeline --teacher demo-out/teacher.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_VS_INT8 = 3.0
TARGET_VS_EAGER = 20.0
MAX_DROP = 1.0


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.suites.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="demo-out/teacher.pt")
    p.add_argument("--recipe", default="cpu-tiny-int8", help="recipe whose recommended artifact is shipped")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--run-dir", default="demo-out/pipeline-run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resolutions", default="ref,224", help="'ref' is the teacher's reference resolution")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round, short timing")
    return p.parse_args(argv)


def _at(art, res: int | None):
    """The same model with its input spec at ``res`` (fully convolutional nets with global pooling run at any size)."""
    if res is None or res == art.input_spec.resolution[0]:
        return art
    return dataclasses.replace(art, input_spec=art.input_spec.with_resolution(res), path=None, history=list(art.history))


def _rebuild(role: str, teacher, compressed, qcfg, data, folder: Path):
    """The recommended artifact again, from its PyTorch source, at the teacher's current input size."""
    from edgetl.pipeline import quantize_into

    if role == "teacher" or compressed is None:
        return teacher
    if role == "compressed":
        return compressed
    if role == "quantized":
        return quantize_into(compressed, qcfg, data, folder)
    if role.startswith("export:"):
        from exporters.base import export

        [art] = export(compressed, role.split(":", 1)[1], folder, data=data)
        return art
    raise ValueError(f"cannot rebuild artifact role {role!r}")


def main(argv=None) -> int:
    a = _args(argv)
    import torch

    torch.set_flush_denormal(True)
    from benchmarks.harness import BenchConfig, environment, measure
    from benchmarks.profiles import load_profile
    from edgetl.data import load_data
    from edgetl.models import load_model
    from edgetl.pipeline import quantize_into, run_recipe
    from edgetl.quantize import QuantizeConfig
    from edgetl.recipe import load_recipe

    rounds, min_time = (1, 0.3) if a.quick else (a.rounds, a.min_time)
    recipe = load_recipe(a.recipe, model=a.teacher, data=a.data)
    result = run_recipe(recipe, a.run_dir)
    rep = result.report
    rec = rep["recommendation"] or {}
    teacher_row = next(r for r in rep["artifacts"] if r["role"] == "teacher")
    # Whatever the run would ship is what is measured: the fastest artifact within 1 point of the teacher.
    role = rec.get("role", "teacher")
    torch_stages = [o for o in result.stages if o.kind in ("prune", "distill")]
    compressed = torch_stages[-1].artifacts[0] if torch_stages else None
    qstage = recipe.stage("quantize")
    qcfg = QuantizeConfig(**qstage.options) if qstage else None
    data = load_data(a.data)
    teacher = load_model(a.teacher)
    profile = load_profile("x86-cpu")
    cfg = BenchConfig(threads=a.threads, batch=1, min_time_s=min_time, min_count=50 if a.quick else 200)
    ref_res = teacher.input_spec.resolution[0]
    resolutions = [ref_res if r == "ref" else int(r) for r in a.resolutions.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            t = _at(teacher, res)
            t_int8 = quantize_into(t, QuantizeConfig(backend="openvino", precision="int8"), data,
                                   Path(tmp) / f"teacher-int8-{res}")
            shipped = t_int8 if role == "baseline:teacher-int8" else _rebuild(
                role, t, _at(compressed, res) if compressed else None, qcfg, data, Path(tmp) / f"shipped-{res}")
            cands = {"teacher eager fp32": t, "teacher NNCF int8 (OpenVINO)": t_int8, "shipped": shipped}
            p90s: dict[str, list[float]] = {k: [] for k in cands}
            info: dict[str, dict] = {}
            for _ in range(rounds):
                for name, art in cands.items():
                    r = measure(art, cfg, profile=profile)
                    p90s[name].append(r.latency_ms.p90)
                    info[name] = {"format": r.format, "runtime": r.runtime, "precision": r.precision,
                                  "p50_ms": r.latency_ms.p50, "count": r.latency_ms.count}
            med = {k: statistics.median(v) for k, v in p90s.items()}
            rows.append({"resolution": res, "p90_ms_median": med, "p90_ms_rounds": p90s, "info": info,
                         "vs_teacher_int8": med["teacher NNCF int8 (OpenVINO)"] / med["shipped"],
                         "vs_teacher_eager": med["teacher eager fp32"] / med["shipped"]})
    acc_t = teacher_row["accuracy"]
    acc_s = rec.get("accuracy", acc_t)
    ref_row = rows[0]
    fastest = min((r for r in rep["artifacts"] if not r["role"].startswith("baseline") and r["role"] != "teacher"),
                  key=lambda r: r["p90_ms"], default=None)
    verdict = {
        "shipped_role": role,
        "vs_teacher_int8": ref_row["vs_teacher_int8"], "vs_teacher_eager": ref_row["vs_teacher_eager"],
        "accuracy_teacher": acc_t, "accuracy_shipped": acc_s, "drop_points": 100 * (acc_t - acc_s),
        "meets": {"3x_vs_int8": ref_row["vs_teacher_int8"] >= TARGET_VS_INT8,
                  "20x_vs_eager": ref_row["vs_teacher_eager"] >= TARGET_VS_EAGER,
                  "within_1_point": 100 * (acc_t - acc_s) <= MAX_DROP},
        "fastest_compressed": ({"role": fastest["role"], "accuracy": fastest["accuracy"], "p90_ms": fastest["p90_ms"]}
                               if fastest else None),
    }
    command = "flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.pipeline " + shlex.join(argv or sys.argv[1:])
    out = {"command": command, "recipe": recipe.to_dict(), "shipped": rec, "rows": rows, "verdict": verdict,
           "env": environment(profile), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": a.quick}
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "pipeline-quick" if a.quick else "pipeline"
    (out_dir / f"{name}.json").write_text(json.dumps(out, indent=2, default=str))
    (out_dir / f"{name}.md").write_text(_markdown(out))
    print(_markdown(out))
    return 0


def _markdown(out) -> str:
    v = out["verdict"]
    lines = [f"# Pipeline targets ({out['when']})", "", f"Command: `{out['command']}`", "",
             f"Recipe `{out['recipe']['name']}`; the run's recommendation (fastest within 1 point of the teacher): "
             f"{out['shipped'].get('line', 'none')}", "",
             "| resolution | teacher eager fp32 p90 ms | teacher NNCF int8 p90 ms | shipped p90 ms | vs int8 | vs eager |",
             "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        m = r["p90_ms_median"]
        lines.append(f"| {r['resolution']} | {m['teacher eager fp32']:.3f} | {m['teacher NNCF int8 (OpenVINO)']:.3f} | "
                     f"{m['shipped']:.3f} | {r['vs_teacher_int8']:.1f}x | {r['vs_teacher_eager']:.1f}x |")
    lines += ["", f"Accuracy (test split): teacher {100 * v['accuracy_teacher']:.2f} %, shipped "
              f"{100 * v['accuracy_shipped']:.2f} % (drop {v['drop_points']:.2f} points).", "",
              "Targets at the reference resolution: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}"
                                                               for k, ok in v["meets"].items()),
              "", "Medians of the per-round p90 (batch 1, 2 threads, interleaved rounds in one process)."]
    f = v.get("fastest_compressed")
    if f:
        lines += ["", f"Fastest compressed artifact of the run: {f['role']}, {100 * f['accuracy']:.2f} %, "
                  f"p90 {f['p90_ms']:.3f} ms (from the run's own bench stage)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
