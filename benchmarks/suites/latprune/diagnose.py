"""Why the isolated per-layer latency table under-predicts pruned models, and whether in-situ deltas do better.

For one teacher on OpenVINO int8 (edgetl's NNCF path), in ONE quiet window, interleaved: the unpruned model,
every in-situ variant (:mod:`benchmarks.latency_insitu`: one group cut at a few widths in the full model) and
held-out pruned models (LRP at FLOPs targets, uniform widths, seeded random widths); then each held-out model's
measured p50 against the isolated table's prediction and the in-situ prediction, the table's sum of isolated
layers against the measured full model, and OpenVINO's own per-op counters of the full int8 model (where the
time goes by op type). Deploying (pruning, NNCF) happens before the window.

    python -m benchmarks.suites.latprune.diagnose --teacher /work/main/demo-out/teacher.pt --work bench-work/diag
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


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _widths(model, groups):
    mods = dict(model.named_modules())
    return {g: int(getattr(mods[g], "out_channels", getattr(mods[g], "out_features", 0))) for g in groups}


def _op_profile(deployer, q, x, n: int = 200) -> dict[str, float]:
    req = deployer.compile(q, perf=True)
    for _ in range(n):
        req.infer({0: x}, share_inputs=True)
    by_type: dict[str, float] = defaultdict(float)
    for p in req.profiling_info:
        if p.status.name == "EXECUTED":
            by_type[p.node_type] += p.real_time.total_seconds() * 1e3
    return {k: v / n for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--work", default="bench-work/diagnose")
    p.add_argument("--out", default="benchmarks/results/latprune-diagnose.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--fractions", default="0.25,0.5,0.75")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(a.threads)
    from benchmarks.latency_insitu import InSituModel, OpenVinoInt8, group_widths, prunable_groups, prune_groups_to
    from benchmarks.latency_table import build_latency_table
    from benchmarks.quiet import quiet_machine
    from edgetl.data import load_data, prepare
    from edgetl.models import load_model
    from edgetl.prune import PruneConfig, prune

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = load_model(a.teacher)
    spec, shape = teacher.input_spec, tuple(teacher.input_spec.shape)
    splits = load_data("mnist5k", seed=0)
    calib = prepare(splits.train.images[:32], spec).numpy().astype(np.float32)
    model = teacher.model.eval()
    groups = prunable_groups(model, shape)
    fr = [float(f) for f in a.fractions.split(",")]
    _log(f"{len(groups)} prunable groups")
    # held-out allocations: LRP at FLOPs targets, uniform, seeded random (none of them an in-situ variant)
    held: dict[str, dict[str, int]] = {}
    for f in (0.5, 0.3):
        pr = prune(teacher, PruneConfig(criterion="lrp", target_flops=f, samples_per_class=10), data=splits)
        held[f"lrp-flops-{f:g}"] = _widths(pr.model, groups)
    held["uniform-0.5"] = {g: max(8, int(round(w * 0.5 / 8)) * 8) for g, w in groups.items()}
    rng = random.Random(0)
    for k in range(2):
        held[f"random-{k}"] = {g: rng.choice([*group_widths(w, fractions=(0.3, 0.45, 0.6, 0.8)), w])
                               for g, w in groups.items()}
    with tempfile.TemporaryDirectory(prefix="edgetl-diag-") as tmp:
        dep = OpenVinoInt8(spec, calib, a.threads, Path(tmp))
        t0 = time.perf_counter()
        plan = [("base", None)] + [(f"{g}@{w}", (g, w)) for g, full in groups.items()
                                   for w in group_widths(full, fractions=fr)]
        irs = []
        for i, (_, gw) in enumerate(plan):
            if i % 20 == 0:
                _log(f"deploying in-situ {i + 1}/{len(plan)}")
            irs.append(dep(model if gw is None else prune_groups_to(model, shape, {gw[0]: gw[1]})))
        held_irs = [dep(prune_groups_to(model, shape, w)) for w in held.values()]
        deploy_s = time.perf_counter() - t0
        _log(f"deployed {len(irs) + len(held_irs)} int8 IRs in {deploy_s:.0f} s; timing")
        x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
        with quiet_machine() as q:
            t1 = time.perf_counter()
            table = build_latency_table(model, shape, runtime="openvino", threads=a.threads, device="x86-cpu",
                                        cache_dir=work / "latency-cache", precision="int8", base_ms=1.0)
            table_s = time.perf_counter() - t1
            times = dep.time(irs + held_irs, rounds=a.rounds, calls=a.calls)
            ops = _op_profile(dep, irs[0], x)
            window_s = time.perf_counter() - t1
    base = times[0]
    ins = InSituModel(base_ms=base, window_base_ms=base, groups=groups, deltas={})
    for (_, gw), t in zip(plan[1:], times[1:len(plan)], strict=True):
        ins.deltas.setdefault(gw[0], {})[gw[1]] = t - base
    table.base_ms = base
    rows = []
    for (name, w), t in zip(held.items(), times[len(plan):], strict=True):
        rows.append({"model": name, "measured_ms": t, "table_ms": table.predict_ms(w), "insitu_ms": ins.predict_ms(w),
                     "table_err": table.predict_ms(w) / t - 1, "insitu_err": ins.predict_ms(w) / t - 1,
                     "measured_change": t - base, "table_change": table.predict_ms(w) - base,
                     "insitu_change": ins.predict_ms(w) - base})
    iso_sum = sum(e.full_ms for e in table.layers)
    by_kind: dict[str, float] = defaultdict(float)
    for e in table.layers:
        by_kind[e.sig.kind] += e.full_ms
    out = {"teacher": a.teacher, "input_shape": list(shape), "threads": a.threads, "base_ms": base,
           "deploy_s": deploy_s, "table_s": table_s, "window_s": window_s, "quiet": q.to_dict(),
           "table": {"floor_ms": table.floor_ms, "layers": len(table.layers),
                     "sum_isolated_compute_ms": iso_sum, "sum_with_floor_ms": iso_sum + table.floor_ms * len(table.layers),
                     "by_kind_ms": dict(by_kind)},
           "openvino_counters_ms": ops, "openvino_counters_total_ms": sum(ops.values()),
           "held_out": rows, "insitu": ins.to_dict()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("insitu",)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
