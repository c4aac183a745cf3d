"""Scarce-data pruning without fine-tuning: accuracy vs pruning ratio for each criterion.

The experiment of "Pruning by Explaining" (Yeom et al. 2021) and PXP (Hatefi et al. 2024): for each criterion,
one-shot global pruning at ratios 0.1 ... 0.9 with no fine-tuning, reference sets of N = 1, 5, 10 samples per
class drawn from the train split with several seeds, top-1 on the test split. The area under each
accuracy-vs-ratio curve (trapezoid over [0, max ratio], the unpruned accuracy at 0, divided by the max ratio,
so 1.0 is a model that never loses accuracy) summarises a criterion in one number.

Models: the reference teacher (``demo-out/teacher.pt``, EfficientNet-Lite0 fine-tuned on mnist5k at 64x64) and a
ResNet-18 trained here from scratch on mnist5k at 32x32 (cached outside the repository).

Run (accuracy only, so it may run beside other work, but never beside another benchmark)::

    flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.criteria

Writes ``benchmarks/results/criteria.json``, ``criteria.png`` and ``criteria.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "results"  # benchmarks/results
CACHE = Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "criteria"
CRITERIA_ORDER = ("lrp", "taylor", "l1", "l2", "random")


def _auc(ratios: list[float], accs: list[float], base: float) -> float:
    xs, ys = [0.0, *ratios], [base, *accs]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / xs[-1]


def _resnet18(splits, *, epochs: int, log) -> Any:
    from edgetl.artifact import Artifact, Format, InputSpec
    from edgetl.models import build_arch, load_model, save_model
    from edgetl.train import fit

    path = CACHE / f"resnet18_mnist5k_32_e{epochs}.pt"
    if path.exists():
        log(f"resnet18: cached {path}")
        return load_model(path)
    spec = InputSpec(shape=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), source_channels=1)
    model = build_arch("resnet18", num_classes=splits.num_classes)
    start = time.perf_counter()
    result = fit(model, splits, spec, epochs=epochs, lr=1e-3, seed=0, description="train resnet18")
    log(f"resnet18: trained {epochs} epochs in {time.perf_counter() - start:.0f} s, val {result.best_val_accuracy:.4f}")
    art = Artifact(format=Format.TORCH, model=model.eval(), arch="resnet18", input_spec=spec, labels=splits.classes)
    save_model(art, path)
    return art


def _curves(name: str, art, splits, *, ratios, samples, seeds, criteria, normalize, round_to, test_limit,
            log) -> dict:
    import torch

    from edgetl.data import ImageSet
    from edgetl.prune import PruneConfig, make_criterion, prune_model, reference_set
    from edgetl.train import evaluate_module

    spec = art.input_spec
    model = art.model.eval()
    example = torch.zeros(spec.batch_shape(1))
    # the test split's order is already a seeded shuffle of MNIST, so its head is a fair subset
    test = ImageSet(splits.test.images[:test_limit], splits.test.labels[:test_limit])
    base = evaluate_module(model, test, spec)["accuracy"]
    log(f"{name}: unpruned test accuracy {base:.4f}")
    runs = []
    for crit in criteria:
        probe = make_criterion(crit)
        for n in (samples if probe.needs_data else [None]):
            for seed in (seeds if (probe.needs_data or crit == "random") else [seeds[0]]):
                start = time.perf_counter()
                criterion = make_criterion(crit, normalize=normalize, seed=seed)
                ref = (reference_set(splits.train, spec, per_class=n, seed=seed, num_classes=splits.num_classes)
                       if probe.needs_data else None)
                info = criterion.prepare(model, ref)
                cfg = PruneConfig(criterion=crit, normalize=normalize, round_to=round_to)
                accs, params = [], []
                for r in ratios:
                    trial = copy.deepcopy(model)
                    prune_model(trial, example, criterion, ratio=r, config=cfg, arch=name)
                    accs.append(evaluate_module(trial, test, spec)["accuracy"])
                    params.append(sum(p.numel() for p in trial.parameters()))
                run = {"criterion": crit, "samples_per_class": n, "seed": seed, "ratios": ratios, "accuracy": accs,
                       "params": params, "auc": _auc(ratios, accs, base),
                       "scoring": {k: info[k] for k in ("cost_ratio", "seconds", "conservation", "canonizers", "notes")
                                   if k in info}}
                runs.append(run)
                log(f"{name} {crit:7s} N={n} seed={seed}: AUC {run['auc']:.4f} "
                    f"acc {' '.join(f'{a:.2f}' for a in accs)} ({time.perf_counter() - start:.0f} s)")
    return {"model": name, "arch": art.arch, "input_shape": list(spec.shape), "base_accuracy": base,
            "test_samples": len(test), "runs": runs}


def _summary(model_result: dict, samples: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    """criterion -> N -> {mean, std, n} of AUC (data-free criteria repeat their value under every N)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for run in model_result["runs"]:
        keys = [run["samples_per_class"]] if run["samples_per_class"] is not None else samples
        for n in keys:
            out.setdefault(run["criterion"], {}).setdefault(str(n), []).append(run["auc"])  # type: ignore[arg-type]
    return {c: {n: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0, "n": len(v)}
                for n, v in d.items()} for c, d in out.items()}


def _plot(results: dict, path: Path, samples: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(len(models), len(samples), figsize=(4.2 * len(samples), 3.6 * len(models)),
                             squeeze=False, sharey=True)
    colors = {"lrp": "tab:red", "taylor": "tab:blue", "l1": "tab:green", "l2": "tab:olive", "random": "tab:gray"}
    for i, m in enumerate(models):
        for j, n in enumerate(samples):
            ax = axes[i][j]
            for crit in CRITERIA_ORDER:
                runs = [r for r in m["runs"] if r["criterion"] == crit and r["samples_per_class"] in (n, None)]
                if not runs:
                    continue
                xs = [0.0, *runs[0]["ratios"]]
                curves = [[m["base_accuracy"], *r["accuracy"]] for r in runs]
                mean = [statistics.fmean(c[k] for c in curves) for k in range(len(xs))]
                lo = [min(c[k] for c in curves) for k in range(len(xs))]
                hi = [max(c[k] for c in curves) for k in range(len(xs))]
                auc = statistics.fmean(r["auc"] for r in runs)
                ax.plot(xs, mean, marker="o", ms=3, color=colors[crit], label=f"{crit} (AUC {auc:.3f})")
                if len(runs) > 1:
                    ax.fill_between(xs, lo, hi, color=colors[crit], alpha=0.15)
            ax.set_title(f"{m['model']}: N = {n} per class", fontsize=10)
            ax.set_xlabel("pruning ratio (share of channels removed)")
            if j == 0:
                ax.set_ylabel("test top-1 (no fine-tuning)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("One-shot global pruning without fine-tuning (mean over seeds, band = min..max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(results: dict, samples: list[int]) -> str:
    lines = ["# Pruning criteria: scarce data, no fine-tuning", "",
             f"Command: `{results['command']}`  ", f"Date: {results['date']}; {results['environment']}", "",
             "One-shot global pruning at ratios " + ", ".join(f"{r:g}" for r in results["ratios"]) +
             " (share of prunable channels removed; classifier kept; per-layer cap 0.9; "
             f"round_to {results['round_to']}; per-group normalisation: {results['normalize']}), no fine-tuning. "
             f"Reference set: N samples per class from the train split, seeds {results['seeds']}. "
             "AUC = area under test-accuracy vs ratio from 0 (unpruned) to the largest ratio, divided by that "
             "ratio (1.0 = no loss). Mean ± std over seeds; l1/l2 use no data and no seed.", ""]
    for m in results["models"]:
        lines += [f"## {m['model']} ({m['arch']}, input {'x'.join(map(str, m['input_shape']))}, "
                  f"unpruned test accuracy {m['base_accuracy']:.4f} on {m['test_samples']} images)", "",
                  "| criterion | " + " | ".join(f"AUC N={n}" for n in samples) + " |",
                  "|---|" + "---|" * len(samples)]
        summ = m["summary"]
        for crit in CRITERIA_ORDER:
            if crit not in summ:
                continue
            cells = []
            for n in samples:
                s = summ[crit].get(str(n))
                cells.append("-" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f}")
            lines.append(f"| {crit} | " + " | ".join(cells) + " |")
        ratios = results["ratios"]
        lines += ["", f"Accuracy per ratio at N={samples[-1]} (mean over seeds):", "",
                  "| criterion | " + " | ".join(f"{r:g}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
        for crit in CRITERIA_ORDER:
            runs = [r for r in m["runs"] if r["criterion"] == crit and r["samples_per_class"] in (samples[-1], None)]
            if runs:
                accs = [statistics.fmean(r["accuracy"][k] for r in runs) for k in range(len(ratios))]
                lines.append(f"| {crit} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
        lrp = [r for r in m["runs"] if r["criterion"] == "lrp" and r["scoring"].get("cost_ratio")]
        if lrp:
            ratios_cost = sorted(r["scoring"]["cost_ratio"] for r in lrp)
            cons = lrp[0]["scoring"].get("conservation", {})
            lines += ["", f"LRP scoring cost: median {statistics.median(ratios_cost):.2f}x one plain "
                      f"forward+backward over the same samples ({len(ratios_cost)} runs). "
                      f"Canonizers: {', '.join(lrp[0]['scoring'].get('canonizers', []))}. "
                      f"Relevance reaching the input / seeded: {cons.get('input_over_seed', float('nan')):.3f}."]
            for note in lrp[0]["scoring"].get("notes", []):
                lines.append(f"Note: {note}.")
        lines.append("")
    lines += ["![accuracy vs ratio](criteria.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suites.criteria", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="demo-out/teacher.pt", help="reference teacher checkpoint")
    parser.add_argument("--models", default="teacher,resnet18", help="comma list of: teacher, resnet18")
    parser.add_argument("--criteria", default=",".join(CRITERIA_ORDER))
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--samples", default="1,5,10", help="reference samples per class")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the reference draw (and of random scores)")
    parser.add_argument("--normalize", default="none", help="per-group normalisation: none, mean, sum, max")
    parser.add_argument("--round-to", type=int, default=1, help="width multiple (1: exact channel counts)")
    parser.add_argument("--resnet-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=300, help="test images per evaluation (the head of the split, which is in random order)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 ratios, N=1,10, one seed")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)

    import torch

    from edgetl.data import load_data
    from edgetl.fileio import atomic_path, write_json
    from edgetl.models import load_model

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    ratios = [float(r) for r in args.ratios.split(",")]
    samples = [int(n) for n in args.samples.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        ratios, samples, seeds = [0.2, 0.5, 0.8], [1, 10], seeds[:1]
    criteria = [c.strip() for c in args.criteria.split(",")]
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    splits = load_data("mnist5k", seed=0)
    models = []
    for name in args.models.split(","):
        if name == "teacher":
            art = load_model(args.teacher)
            label = "teacher (EfficientNet-Lite0, mnist5k)"
        elif name == "resnet18":
            art = _resnet18(splits, epochs=args.resnet_epochs, log=log)
            label = "ResNet-18 (mnist5k, from scratch)"
        else:
            print(f"unknown model {name!r}; valid: teacher, resnet18", file=sys.stderr)
            return 2
        result = _curves(label, art, splits, ratios=ratios, samples=samples, seeds=seeds, criteria=criteria,
                         normalize=args.normalize, round_to=None if args.round_to <= 1 else args.round_to,
                         test_limit=args.test_limit, log=log)
        result["summary"] = _summary(result, samples)
        models.append(result)
    results = {
        "suite": "criteria",
        "command": "flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.criteria "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
                       "shared 2-core machine",
        "ratios": ratios, "samples": samples, "seeds": seeds, "normalize": args.normalize,
        "round_to": args.round_to, "seconds": time.perf_counter() - start, "models": models,
    }
    out = Path(args.out)
    stem = "criteria_quick" if args.quick else "criteria"
    write_json(out / f"{stem}.json", results)
    with atomic_path(out / f"{stem}.png") as tmp:
        _plot(results, tmp.with_suffix(".png"), samples)
        tmp.with_suffix(".png").replace(tmp)
    md = _markdown(results, samples).replace("criteria.png", f"{stem}.png")
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    log(f"wrote {out / stem}.json/.png/.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
