"""Why the isolated per-layer latency table under-predicts pruned models, and whether in-situ deltas do better.

Reads the latprune suite's work dir (its in-situ deltas ``insitu.json``, its pruned points, its latency-table
cache), then for one teacher on OpenVINO int8 (edgetl's NNCF path), in ONE quiet window, interleaved: the
unpruned model and held-out pruned models (the suite's LRP FLOPs points, uniform half width, seeded random
widths; the latency points too, which were chosen on the in-situ model); each one's measured p50 against the
isolated table's prediction and the in-situ prediction (both from this window's measured unpruned p50), the
table's sum of isolated layers against the measured full model, and OpenVINO's own per-op counters of the full
int8 model (where the time goes, by op type). Deploying (NNCF) happens before the window.

    python -m benchmarks.suites.latprune.diagnose --teacher /work/main/demo-out/teacher.pt --work bench-work/latprune
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _widths(model, groups):
    mods = dict(model.named_modules())
    return {g: int(getattr(mods[g], "out_channels", getattr(mods[g], "out_features", 0))) for g in groups}


def _op_profile(deployer, q, x, n: int = 50) -> dict[str, float]:
    """OpenVINO's per-op counters by op type (ms), averaged over ``n`` calls read one by one (``profiling_info``
    holds the last inference's counters, not a sum)."""
    req = deployer.compile(q, perf=True)
    by_type: dict[str, float] = defaultdict(float)
    for _ in range(n):
        req.infer({0: x}, share_inputs=True)
        for p in req.profiling_info:
            if p.status.name == "EXECUTED":
                by_type[p.node_type] += p.real_time.total_seconds() * 1e3 / n
    return dict(sorted(by_type.items(), key=lambda kv: -kv[1]))


def _held_out(teacher, work: Path, groups: dict[str, int]) -> dict[str, Any]:
    """Pruned models none of whose widths were chosen by the in-situ model: the suite's LRP FLOPs points, uniform
    half width, seeded random widths; and the suite's latency points (chosen on it) if built."""
    from benchmarks.latency_insitu import group_widths, prune_groups_to
    from edgetl.models import load_model

    shape = tuple(teacher.input_spec.shape)
    out: dict[str, Any] = {}
    for f in sorted(work.glob("lrp-*/model.pt")):
        out[f.parent.name] = load_model(f).model.eval()
    out["uniform-0.5"] = prune_groups_to(teacher.model, shape, {g: max(8, int(round(w * 0.5 / 8)) * 8)
                                                                for g, w in groups.items()})
    rng = random.Random(0)
    for k in range(2):
        out[f"random-{k}"] = prune_groups_to(teacher.model, shape, {
            g: rng.choice([*group_widths(w, fractions=(0.3, 0.45, 0.6, 0.8)), w]) for g, w in groups.items()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--work", default="bench-work/latprune", help="the latprune suite's work dir (its section)")
    p.add_argument("--section", default="s1")
    p.add_argument("--out", default="benchmarks/results/latprune-diagnose.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--pause", default="", help="pids of one's own processes to SIGSTOP while timing")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(a.threads)
    from benchmarks.latency_insitu import InSituModel, OpenVinoInt8, prunable_groups
    from benchmarks.latency_table import build_latency_table
    from benchmarks.quiet import quiet_machine
    from edgetl.data import load_data, prepare
    from edgetl.models import load_model

    work = Path(a.work) / a.section
    teacher = load_model(a.teacher)
    spec, shape = teacher.input_spec, tuple(teacher.input_spec.shape)
    splits = load_data("mnist5k", seed=0)
    calib = prepare(splits.train.images[:32], spec).numpy().astype(np.float32)
    model = teacher.model.eval()
    groups = prunable_groups(model, shape)
    insitu = InSituModel.from_dict(json.loads((work / "insitu.json").read_text()))
    held = _held_out(teacher, work, groups)
    names = list(held)
    with tempfile.TemporaryDirectory(prefix="edgetl-diag-") as tmp:
        dep = OpenVinoInt8(spec, calib, a.threads, Path(tmp))
        t0 = time.perf_counter()
        irs = [dep(model)] + [dep(held[n]) for n in names]
        deploy_s = time.perf_counter() - t0
        _log(f"deployed {len(irs)} int8 IRs in {deploy_s:.0f} s; timing")
        x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
        with quiet_machine(pause=[int(x) for x in a.pause.split(",") if x.strip()]) as q:
            t1 = time.perf_counter()
            table = build_latency_table(model, shape, runtime="openvino", threads=a.threads, device="x86-cpu",
                                        cache_dir=Path(a.work) / "latency-cache", precision="int8", base_ms=1.0)
            times = dep.time(irs, rounds=a.rounds, calls=a.calls)
            ops = _op_profile(dep, irs[0], x)
            window_s = time.perf_counter() - t1
    base = times[0]
    table.base_ms = insitu.base_ms = base
    rows = []
    for n, t in zip(names, times[1:], strict=True):
        w = {g: v for g, v in _widths(held[n], groups).items()}
        tp, ip = table.predict_ms(w), insitu.predict_ms(w)
        rows.append({"model": n, "measured_ms": round(t, 4), "table_ms": round(tp, 4), "insitu_ms": round(ip, 4),
                     "table_err_pc": round(100 * (tp / t - 1), 1), "insitu_err_pc": round(100 * (ip / t - 1), 1),
                     "measured_change_ms": round(t - base, 4), "table_change_ms": round(tp - base, 4),
                     "insitu_change_ms": round(ip - base, 4)})
    by_kind: dict[str, float] = defaultdict(float)
    for e in table.layers:
        by_kind[e.sig.kind] += e.full_ms
    iso = sum(by_kind.values())
    out = {"teacher": a.teacher, "input_shape": list(shape), "threads": a.threads, "base_ms": base,
           "deploy_s": deploy_s, "window_s": window_s, "quiet": q.to_dict(),
           "timing": {"rounds": a.rounds, "calls": a.calls, "how": "perf_counter around infer(), interleaved"},
           "table": {"floor_ms": table.floor_ms, "layers": len(table.layers), "sum_isolated_compute_ms": iso,
                     "sum_with_floor_ms": iso + table.floor_ms * len(table.layers), "by_kind_ms": dict(by_kind),
                     "clamped": table.clamped},
           "openvino_counters_ms": ops, "openvino_counters_total_ms": sum(ops.values()),
           "insitu_window_base_ms": insitu.window_base_ms, "held_out": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
