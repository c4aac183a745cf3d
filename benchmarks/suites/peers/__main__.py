"""Peers: edgetl LRP (FLOPs target and measured-latency target) against Torch-Pruning's own pruners and NVIDIA
ModelOpt FastNAS, on the same teacher, data and recovery budget, each quantized by the same int8 path.

1. Torch-Pruning ``MetaPruner`` (global, ``round_to`` 8, classifier ignored) at ``--ratio`` with
   ``GroupMagnitudeImportance`` (L2), ``GroupTaylorImportance``, ``GroupHessianImportance`` and the magnitude
   pruner again with ``isomorphic=True``.
2. edgetl LRP with a FLOPs target equal to the FLOPs the magnitude peer kept (same FLOPs), and with a latency
   target equal to the magnitude peer's measured p50 on ``--latency-runtime`` (same latency; widths from the
   per-layer latency table, checked by measurement).
3. NVIDIA ModelOpt FastNAS when ``modelopt`` imports (it needs a separate venv here, see ../shared/FIELD.md);
   otherwise it is listed with the reason.
4. Every pruned model gets the same recovery (``--recover-epochs`` of fine-tuning), then NNCF int8 for OpenVINO
   (edgetl's quantizer, the same calibration set), and is measured interleaved in one process (A B C A B C,
   ``--rounds``; medians of the per-round p50): ONNX Runtime fp32 and OpenVINO int8, batch 1, ``--threads``.
5. Writes ``benchmarks/results/peers.{json,md,png}`` (``peers-smoke.*`` with ``--smoke``) with the command.

It measures latency; its timed parts (the latency target's table and fit, the final measurement) take the
machine alone through :func:`benchmarks.quiet.quiet_machine` (no outer flock: it would wait for itself)::

    .venv/bin/python -m benchmarks.suites.peers --teacher demo-out/teacher.pt

``--smoke`` (a tiny CNN trained for one epoch on digits, one recovery epoch, short timing) proves the suite
runs end to end; its figures are no claim.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.suites.peers", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="demo-out/teacher.pt")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--ratio", type=float, default=0.5, help="Torch-Pruning's channel pruning ratio")
    p.add_argument("--recover-epochs", type=int, default=3)
    p.add_argument("--recover-lr", type=float, default=1e-3)
    p.add_argument("--latency-runtime", default="openvino", choices=["openvino", "onnxruntime"],
                   help="runtime of the latency target (fp32 there; the int8 models are measured after)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--samples-per-class", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="tiny model, one epoch, short timing: proves it runs")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- peers
def _classifier(model):
    from edgetl.models import classifier_layer

    return classifier_layer(model)[1]


def _tp_prune(art, splits, *, importance: str, ratio: float, isomorphic: bool = False, batches: int = 4):
    """Torch-Pruning's own pruner, as its README drives it (gradients first for Taylor/Hessian)."""
    import torch
    import torch.nn.functional as F
    import torch_pruning as tp

    from edgetl.data import prepare

    model = copy.deepcopy(art.model).eval()
    imp = {"magnitude": tp.importance.GroupMagnitudeImportance(p=2),
           "taylor": tp.importance.GroupTaylorImportance(),
           "hessian": tp.importance.GroupHessianImportance()}[importance]
    example = torch.zeros(art.input_spec.batch_shape(1))
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                  ignored_layers=[_classifier(model)], round_to=8, isomorphic=isomorphic)
    if importance in ("taylor", "hessian"):
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(splits.train), generator=gen)[: 32 * batches]
        x = prepare(splits.train.images[idx], art.input_spec)
        y = torch.as_tensor(splits.train.labels[idx]).long()
        model.zero_grad()
        if importance == "hessian":
            imp.zero_grad()
            for i in range(len(x)):  # Hessian importance accumulates per-sample gradients
                F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
                imp.accumulate_grad(model)
                model.zero_grad(set_to_none=False)  # the importance writes its average into .grad later
        else:
            F.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def _modelopt_status() -> str | None:
    """None when ModelOpt FastNAS can run here, else why not."""
    try:
        import modelopt.torch.prune  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to list
        return (f"nvidia-modelopt is not importable here ({type(e).__name__}: {str(e)[:120]}); per FIELD.md it "
                "needs its own venv with requests, huggingface_hub and torchprofile==0.0.4, and the Lite0 "
                "Conv2dStaticSamePadding replaced by explicit padding + nn.Conv2d")
    return None


def _modelopt_fastnas(art, splits, flops_fraction: float):
    import modelopt.torch.prune as mtp
    import torch

    from edgetl.train import evaluate_module

    model = copy.deepcopy(art.model).eval()
    loader = [(splits.train.images[:64], splits.train.labels[:64])]
    with tempfile.TemporaryDirectory() as tmp:
        pruned, _ = mtp.prune(model, mode="fastnas", constraints={"flops": f"{100 * flops_fraction:.0f}%"},
                              dummy_input=torch.zeros(art.input_spec.batch_shape(1)),
                              config={"data_loader": loader, "checkpoint": f"{tmp}/fastnas.pth",
                                      "score_func": lambda m: evaluate_module(m, splits.val, art.input_spec)["accuracy"]})
    return pruned


# --------------------------------------------------------------------------- measurement
def _recover(model, art, splits, epochs: int, lr: float):
    from edgetl.artifact import StageRecord
    from edgetl.train import fit

    out = art.with_stage(StageRecord("peer-prune", {}, {}), model=model)
    if epochs > 0:
        fit(model, splits, art.input_spec, epochs=epochs, lr=lr, seed=0, description="recover")
    return out


def _export_onnx(art, path: Path):
    import torch

    from edgetl.artifact import Artifact, Format

    x = torch.zeros(art.input_spec.batch_shape(1))
    torch.onnx.export(art.model.eval(), (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      opset_version=17)
    return Artifact(format=Format.ONNX, path=path, input_spec=art.input_spec, labels=art.labels, arch=art.arch,
                    history=list(art.history), extra=dict(art.extra))


def _int8(art, splits, folder: Path):
    from edgetl.quantize import QuantizeConfig, quantize
    from edgetl.stages import StageContext

    # allow_drop: every peer's int8 is measured and reported with its accuracy, whatever the drop
    return quantize(art, QuantizeConfig(backend="openvino", precision="int8", allow_drop=True), data=splits,
                    ctx=StageContext(output=folder / "model.int8.xml"))


def _row(name: str, art, splits, folder: Path, recover_epochs: int, lr: float, extra: dict | None = None) -> dict:
    from edgetl.evaluate import evaluate
    from edgetl.prune import model_cost

    cost = model_cost(art.model, art.input_spec.shape)
    folder.mkdir(parents=True, exist_ok=True)
    onnx = _export_onnx(art, folder / "model.onnx")
    int8 = _int8(art, splits, folder)
    return {"method": name, "params": cost.params, "flops": cost.flops,
            "accuracy_fp32": evaluate(onnx, splits, split="test", threads=1)["accuracy"],
            "accuracy_int8": evaluate(int8, splits, split="test", threads=1)["accuracy"],
            "recover_epochs": recover_epochs, "recover_lr": lr, "_onnx": onnx, "_int8": int8, **(extra or {})}


def _measure_all(rows: list[dict], *, threads: int, rounds: int, min_time: float, smoke: bool) -> None:
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile

    profile = load_profile("x86-cpu")
    cfg = {"onnxruntime": BenchConfig(threads=threads, runtime="onnxruntime", min_time_s=min_time,
                                      min_count=30 if smoke else 200, warmup_s=0.1 if smoke else 0.5),
           "openvino": BenchConfig(threads=threads, runtime="openvino", min_time_s=min_time,
                                   min_count=30 if smoke else 200, warmup_s=0.1 if smoke else 0.5)}
    samples: dict[tuple[str, str], list[float]] = {}
    warnings: dict[str, list[str]] = {}
    for _ in range(rounds):  # interleaved: every artifact once per round
        for r in rows:
            for key, art, rt in (("ort_fp32", r["_onnx"], "onnxruntime"), ("ov_int8", r["_int8"], "openvino")):
                res = measure(art, cfg[rt], profile=profile)
                samples.setdefault((r["method"], key), []).append(res.latency_ms.p50)
                warnings.setdefault(r["method"], []).extend(res.warnings)
    for r in rows:
        for key in ("ort_fp32", "ov_int8"):
            r[f"p50_ms_{key}"] = statistics.median(samples[(r["method"], key)])
            r[f"p50_ms_{key}_rounds"] = samples[(r["method"], key)]
        r["warnings"] = sorted(set(warnings[r["method"]]))


# --------------------------------------------------------------------------- outputs
def _markdown(out: dict) -> str:
    lines = [f"# Peers ({out['when']}{', SMOKE: no claims' if out['smoke'] else ''})", "",
             f"Command: `{out['command']}`", "",
             f"Teacher {out['teacher']} on {out['data']}; recovery {out['recover_epochs']} epoch(s) for every "
             f"method; int8 = NNCF for OpenVINO; p50 = median of {out['rounds']} interleaved rounds, batch 1, "
             f"{out['threads']} threads.", "",
             "| method | params | MFLOPs | top-1 fp32 | top-1 int8 | ORT fp32 p50 ms | OpenVINO int8 p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['method']} | {r['params']:,} | {r['flops'] / 1e6:.1f} | {100 * r['accuracy_fp32']:.2f} % | "
                     f"{100 * r['accuracy_int8']:.2f} % | {r['p50_ms_ort_fp32']:.3f} | {r['p50_ms_ov_int8']:.3f} |")
    if out["skipped"]:
        lines += ["", "Not run here:"] + [f"- {k}: {v}" for k, v in out["skipped"].items()]
    lat = next((r for r in out["rows"] if r["method"] == "edgetl-lrp-latency"), None)
    if lat and lat.get("latency"):
        lr = lat["latency"]
        lines += ["", f"edgetl latency target {lr['target_ms']:.3f} ms on {lr['runtime']} (the magnitude peer's "
                  f"measured p50): predicted {lr['predicted_ms']:.3f} ms, measured {lr['measured_p50_ms']:.3f} ms "
                  f"before recovery, {len(lr['iterations'])} iteration(s). The target is fp32 on that runtime "
                  "(the latency table measures fp32 layers); the int8 column is measured after quantization."]
    return "\n".join(lines) + "\n"


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, acc, title in ((axes[0], "p50_ms_ov_int8", "accuracy_int8", "OpenVINO int8 (NNCF)"),
                                (axes[1], "p50_ms_ort_fp32", "accuracy_fp32", "ONNX Runtime fp32")):
        for r in out["rows"]:
            ax.scatter(r[key], 100 * r[acc], s=36)
            ax.annotate(r["method"], (r[key], 100 * r[acc]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("p50 latency, ms (batch 1)")
        ax.set_ylabel("top-1 %, test split")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Peers: accuracy against measured latency{' (SMOKE: no claims)' if out['smoke'] else ''}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def _teacher(a, splits):
    from edgetl.artifact import Artifact, Format, InputSpec
    from edgetl.models import build_arch, load_model
    from edgetl.train import fit

    if not a.smoke:
        return load_model(a.teacher)
    import torch

    torch.manual_seed(0)
    spec = InputSpec(shape=(3, 32, 32), source_channels=1)
    art = Artifact(format=Format.TORCH, model=build_arch("edgetl_tinycnn", num_classes=10), arch="edgetl_tinycnn",
                   input_spec=spec, labels=tuple(str(i) for i in range(10)), extra={"data": "digits"})
    fit(art.model, splits, spec, epochs=2, lr=1e-2, seed=0, description="smoke teacher")
    return art


def main(argv=None) -> int:
    a = _args(argv)
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(a.threads)
    from benchmarks.harness import environment
    from benchmarks.quiet import quiet_machine, set_enabled
    from edgetl.cli.latency_target import LatencyTarget

    set_enabled(not a.smoke)  # smoke timings are no claim, and tests start it under the shared lock
    from edgetl.data import load_data
    from edgetl.prune import PruneConfig, model_cost, prune

    data = "digits" if a.smoke else a.data
    splits = load_data(data, seed=0)
    recover = 1 if a.smoke else a.recover_epochs
    rounds, min_time = (1, 0.05) if a.smoke else (a.rounds, a.min_time)
    teacher = _teacher(a, splits)
    base = model_cost(teacher.model, teacher.input_spec.shape)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-peers-") as tmp:
        work = Path(tmp)
        rows.append(_row("teacher (unpruned)", teacher, splits, work / "teacher", 0, a.recover_lr))
        peers = [("tp-magnitude", "magnitude", False), ("tp-taylor", "taylor", False), ("tp-hessian", "hessian", False),
                 ("tp-magnitude-isomorphic", "magnitude", True)]
        for name, imp, iso in peers:
            model = _tp_prune(teacher, splits, importance=imp, ratio=a.ratio, isomorphic=iso,
                              batches=1 if a.smoke else 4)
            art = _recover(model, teacher, splits, recover, a.recover_lr)
            rows.append(_row(name, art, splits, work / name, recover, a.recover_lr))
        mag = next(r for r in rows if r["method"] == "tp-magnitude")
        flops_fraction = mag["flops"] / base.flops
        cfg = PruneConfig(criterion="lrp", target_flops=flops_fraction, samples_per_class=a.samples_per_class,
                          recover_epochs=recover, recover_lr=a.recover_lr)
        rows.append(_row("edgetl-lrp-flops", prune(teacher, cfg, data=splits), splits, work / "lrp-flops", recover,
                         a.recover_lr, {"target_flops": flops_fraction}))
        with quiet_machine():
            target_ms = _p50_of(mag, a.latency_runtime, a.threads, a.smoke)
        target = LatencyTarget.from_options(target_ms=target_ms, device="x86-cpu", runtime=a.latency_runtime,
                                            threads=a.threads, quick=a.smoke)
        try:
            # The table and the fit's measurements run alone (one quiet period); recovery after, the same
            # fine-tuning as every peer's (recovery changes no width).
            with quiet_machine():
                lat_art, lat_report = target.prune(teacher, PruneConfig(criterion="lrp",
                                                                        samples_per_class=a.samples_per_class),
                                                   splits)
            lat_art = _recover(lat_art.model, lat_art, splits, recover, a.recover_lr)
            rows.append(_row("edgetl-lrp-latency", lat_art, splits, work / "lrp-latency", recover, a.recover_lr,
                             {"latency": lat_report}))
        except Exception as e:  # noqa: BLE001 - a missed target is a result to report, not a crash
            skipped["edgetl-lrp-latency"] = f"{type(e).__name__}: {e}"
        why = _modelopt_status()
        if why is None:
            try:
                art = _recover(_modelopt_fastnas(teacher, splits, flops_fraction), teacher, splits, recover,
                               a.recover_lr)
                rows.append(_row("modelopt-fastnas", art, splits, work / "fastnas", recover, a.recover_lr))
            except Exception as e:  # noqa: BLE001
                skipped["modelopt-fastnas"] = f"failed here: {type(e).__name__}: {str(e)[:200]}"
        else:
            skipped["modelopt-fastnas"] = why
        with quiet_machine() as q:
            _measure_all(rows, threads=a.threads, rounds=rounds, min_time=min_time, smoke=a.smoke)
    command = ".venv/bin/python -m benchmarks.suites.peers " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    out = {"command": command, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": a.smoke,
           "teacher": "edgetl_tinycnn (smoke)" if a.smoke else a.teacher, "data": data, "ratio": a.ratio,
           "recover_epochs": recover, "rounds": rounds, "threads": a.threads,
           "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "skipped": skipped,
           "quiet": q.to_dict(),
           "env": environment()}
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "peers-smoke" if a.smoke else "peers"
    (out_dir / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    (out_dir / f"{stem}.md").write_text(_markdown(out))
    _plot(out, out_dir / f"{stem}.png")
    print(_markdown(out))
    return 0


def _p50_of(row: dict, runtime: str, threads: int, smoke: bool) -> float:
    """The magnitude peer's p50 on the latency runtime (its fp32 ONNX), measured now: the latency target."""
    from benchmarks.harness import BenchConfig, measure

    cfg = BenchConfig(threads=threads, runtime=runtime, min_time_s=0.2 if smoke else 2.0,
                      min_count=30 if smoke else 200)
    return measure(row["_onnx"], cfg).latency_ms.p50


if __name__ == "__main__":
    sys.exit(main())
