"""LRP scoring cost: seconds of edgetl's relevance pass over one plain forward+backward on the same samples.

"Pruning by Explaining" puts the criterion's cost "in the order of one gradient computation"; issue #3 asks for
at most 3x. For each model, the LRP pass (zennit composite, canonizers, the per-layer relevance taps) and the
plain pass (forward, then backward of the true-class logits with parameter gradients, as training would) run
on the same reference set (``--samples`` per class from the train split) and batch size, alternated
``--repeats`` times in one process after an untimed warm-up of each; the median of the per-repeat ratios is
reported. The one-off setup of a scoring call (copying the model, the torch.fx trace that canonizes residual
sums, the batch-norm pair search) does not grow with the samples; it is reported beside the ratio, not in it.
The criteria suite also reports a ratio, but it runs beside other work; this one needs a quiet machine.

    flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.lrpcost --teacher demo-out/teacher.pt

Writes ``benchmarks/results/lrp-cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.suites.lrpcost", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="demo-out/teacher.pt")
    p.add_argument("--models", default="teacher,resnet18", help="comma list of: teacher, resnet18")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--samples", type=int, default=10, help="reference samples per class")
    p.add_argument("--batch-sizes", default="64,128")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def _model(name: str, args, splits):
    from edgetl.models import load_model

    if name == "teacher":
        return load_model(args.teacher)
    if name == "resnet18":
        from benchmarks.suites.criteria.__main__ import _resnet18

        return _resnet18(splits, epochs=4, log=lambda m: print(m, file=sys.stderr))
    raise SystemExit(f"unknown model {name!r}; use teacher or resnet18")


def main(argv=None) -> int:
    args = _args(argv)
    import torch

    from edgetl.data import load_data
    from edgetl.prune.relevance import plain_gradient_seconds, reference_set, relevance_scores

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    splits = load_data(args.data)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        art = _model(name, args, splits)
        ref = reference_set(splits.train, art.input_spec, per_class=args.samples, seed=0)
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            relevance_scores(art.model, ref, batch_size=bs, measure_cost=False)  # warm-up of both passes
            plain_gradient_seconds(art.model, ref, batch_size=bs)
            lrp, plain, setup = [], [], []
            for _ in range(args.repeats):
                res = relevance_scores(art.model, ref, batch_size=bs, measure_cost=False)
                lrp.append(res.seconds)
                setup.append(res.setup_seconds)
                plain.append(plain_gradient_seconds(art.model, ref, batch_size=bs))
            ratios = [a / b for a, b in zip(lrp, plain, strict=True)]
            row = {"model": name, "arch": art.arch, "input": list(art.input_spec.shape), "samples": len(ref),
                   "batch_size": bs, "lrp_s": statistics.median(lrp), "plain_s": statistics.median(plain),
                   "setup_s": statistics.median(setup),
                   "ratio_median": statistics.median(ratios), "ratios": ratios}
            print(f"{name} bs={bs}: LRP {row['lrp_s']:.3f} s, plain fwd+bwd {row['plain_s']:.3f} s, "
                  f"ratio {row['ratio_median']:.2f}x (repeats {', '.join(f'{r:.2f}' for r in ratios)})",
                  file=sys.stderr)
            rows.append(row)
    command = "python -m benchmarks.suites.lrpcost " + shlex.join(argv if argv is not None else sys.argv[1:])
    from benchmarks.harness import environment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lrp-cost.json").write_text(json.dumps({"suite": "lrpcost", "command": command, "threads": args.threads,
                                                   "repeats": args.repeats, "env": environment(), "results": rows,
                                                   "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    lines = ["# LRP scoring cost vs one plain forward+backward", "", f"Command: `{command}`  ",
             f"{args.threads} threads; median over {args.repeats} alternated repeats.", "",
             "| model | input | samples | batch | LRP s | plain fwd+bwd s | ratio | one-off setup s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['arch']}) | {'x'.join(map(str, r['input']))} | {r['samples']} | "
                     f"{r['batch_size']} | {r['lrp_s']:.3f} | {r['plain_s']:.3f} | {r['ratio_median']:.2f}x | "
                     f"{r['setup_s']:.3f} |")
    (out / "lrp-cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
