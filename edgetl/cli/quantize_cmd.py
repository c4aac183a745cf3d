"""``edgetl quantize``: int8 (or fp16) for one backend, accuracy-checked against the fp32 model.

Example::

    edgetl quantize teacher.pt --data mnist5k --backend openvino --max-drop 1.0 -o teacher.int8.xml --json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)


def quantize_cmd(
    model: Annotated[str, typer.Argument(help="fp32 model: edgetl checkpoint (.pt), or its ONNX / OpenVINO IR.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset: calibration from its train split, the "
                                      "accuracy check on its val split.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (.onnx for onnxruntime/tensorrt, "
                                         ".xml for openvino, .pte for pytorch; a directory for a TensorRT build "
                                         "bundle).")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="onnxruntime, openvino, tensorrt or "
                                  "pytorch (PT2E int8 for ExecuTorch/XNNPACK).")]
    = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="int8 or fp16.")] = "int8",
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration images, stratified across "
                                               "classes (at least 100 recommended).")] = 300,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Largest accuracy loss in points "
                                                      "(default: the quantize gate's budget, 1 point); sensitive "
                                                      "layers are kept in float until it holds.")] = None,
    allow_drop: Annotated[bool, typer.Option("--allow-drop", help="Write the best model even when the budget "
                                             "cannot be met (exit 0; the result says so).")] = False,
    mode: Annotated[str, typer.Option("--mode", help="onnxruntime: static (CNNs) or dynamic (Linear-heavy).")]
    = "static",
    calibration: Annotated[str, typer.Option("--calibration", help="Activation ranges (onnxruntime / "
                                             "tensorrt): auto (tries percentile and mean-minmax, keeps the more "
                                             "accurate), mean-minmax, percentile, minmax or entropy.")] = "auto",
    keep_float: Annotated[Optional[str], typer.Option("--keep-float", help="Comma-separated layers (or node "
                                                      "names) to keep in floating point.")] = None,
    max_float_layers: Annotated[int, typer.Option("--max-float-layers", help="At most this many layers kept "
                                                  "in float by the --max-drop fallback.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data split and calibration choice.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    input_: co.InputFlag = None,
    opt_shape: co.OptShapeFlag = None,
    min_shape: co.MinShapeFlag = None,
    max_shape: co.MaxShapeFlag = None,
    role: co.RoleFlag = None,
    task: co.TaskFlag = None,
    min_snr: co.MinSnrFlag = None,
    arch: co.ArchFlag = None,
    arch_args: co.ArchArgsFlag = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Quantize a model for one backend and check its accuracy against the fp32 model."""

    def body():
        from edgetl import gates
        from edgetl.quantize import QuantizeConfig

        # Cheap checks first: names, values and the output, before any model or data loads.
        budget = gates.budget_for("quantize", max_drop)
        cfg = QuantizeConfig(backend=backend, precision=precision, calib_samples=calib_samples, max_drop=budget,
                             allow_drop=allow_drop, mode=mode, calibration=calibration, seed=seed,
                             keep_float=tuple(k.strip() for k in (keep_float or "").split(",") if k.strip()),
                             max_float_layers=max_float_layers)
        _check_output(cfg, output, overwrite=overwrite)
        from edgetl.cli import contract_quantize as cq

        flags = co.contract_flags(inputs=input_, opt_shapes=opt_shape, min_shapes=min_shape, max_shapes=max_shape,
                                  roles=role, task=task)  # -o is the file
        art = cq.load_for_quantize(model, arch=arch, arch_args=arch_args)
        if cq.wants_contract(art, flags, min_snr=min_snr, data=data):  # any model, scored label-free
            return cq.quantize_contract(model, art, cfg, flags, data=data, output=output, max_drop=max_drop,
                                        min_snr=min_snr)
        q, splits = _run(art, data, cfg, output=output, budget=budget)
        return _report(model, cfg, q, data_name=splits.name, budget=budget)

    execute(body, json_=json_, debug=debug)


def _check_output(cfg, output: Path, *, overwrite: bool) -> None:
    """The output's suffix for the backend, its kind (a TensorRT fp16 bundle is a directory), and the path."""
    from edgetl.fileio import check_output
    from edgetl.quantize import Backend, QuantPrecision

    _check_suffix(cfg, output)
    bundle = cfg.backend is Backend.TENSORRT and cfg.precision is QuantPrecision.FP16
    check_output(output, kind="dir" if bundle else "file", overwrite=overwrite)  # before any model or data loads


def _run(art, data: str, cfg, *, output: Path, budget: float):
    """Quantize; a budget the quantizer could not meet becomes the gate's error (nothing was written)."""
    import torch

    from edgetl import gates
    from edgetl.data import load_data
    from edgetl.errors import BudgetError
    from edgetl.quantize import quantize
    from edgetl.stages import StageContext

    torch.set_flush_denormal(True)
    splits = load_data(data, seed=cfg.seed)
    try:
        return quantize(art, cfg, data=splits, ctx=StageContext(output=output)), splits
    except BudgetError as e:  # the quantizer's fallback could not bring it inside: nothing was written
        bm = getattr(e, "metrics", None)
        if bm is None:
            raise
        kept = bm.get("kept_float") or []
        v = gates.check("quantize", before=bm["fp32_accuracy"], after=bm["accuracy"], split=cfg.eval_split,
                        budget=budget, note=f"best reached keeps {len(kept)} layer(s) in float"
                        + (f": {', '.join(kept)}" if kept else ""))
        raise gates.gate_error(v) from None


def _report(model: str, cfg, q, *, data_name: str, budget: float):
    """The result (with the quantize gate's verdict) and its rendering."""
    from edgetl import gates
    from edgetl.quantize import Backend

    m = q.history[-1].metrics
    verdict = gates.check("quantize", before=m["fp32_accuracy"], after=m["accuracy"], agreement=m["agreement"],
                          split=m["split"], budget=budget, allow_drop=cfg.allow_drop)
    result = {
        "output": str(q.path), "model": model, "backend": cfg.backend.value, "precision": cfg.precision.value,
        "data": data_name, "split": m["split"],
        "accuracy_before": m["fp32_accuracy"], "accuracy_after": m["accuracy"], "drop_points": m["drop_points"],
        "agreement": m["agreement"], "size_bytes": m.get("size_bytes"), "fp32_size_bytes": m.get("fp32_size_bytes"),
        "kept_float": m["kept_float"], "unquantizable": m["unquantizable"], "max_drop": m["max_drop"],
        "budget_met": m["budget_met"], "calibration": {k: v for k, v in m["calibration"].items() if k != "indices"},
        "warnings": m["warnings"], "attempts": m["attempts"], "backend_info": m["backend_info"],
        "seconds": q.history[-1].seconds, "gate": verdict.to_dict(),
    }
    if "note" in m:
        result["note"] = m["note"]
    if cfg.backend is Backend.ONNXRUNTIME and q.path is not None and q.path.suffix == ".onnx":
        from edgetl.quantize.onnxruntime import explain_size

        why = explain_size(q.path, m.get("fp32_size_bytes"))
        if why:
            result["warnings"] = [*result["warnings"], why]
            m["warnings"] = result["warnings"]
    return result, lambda console: _render(console, model, cfg, m, result, q.path, verdict)


def _render(console, model: str, cfg, m: dict, result: dict, path, verdict) -> None:
    table(console, f"quantize {model} -> {cfg.backend.value} {cfg.precision.value}",
          ["fp32 acc", "quantized acc", "drop (points)", "agreement", "size", "kept in float"],
          [[f"{100 * m['fp32_accuracy']:.2f} %", f"{100 * m['accuracy']:.2f} %", f"{m['drop_points']:.2f}",
            f"{100 * m['agreement']:.1f} %", _mb(result["size_bytes"]),
            ", ".join(k["layer"] for k in m["kept_float"]) or "-"]])
    for u in m["unquantizable"]:
        console.print(f"kept in float ({cfg.backend.value} cannot quantize it): {u['op']} {u['node']}")
    for w in m["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    if m["budget_met"] is False:
        console.print(f"[yellow]budget of {m['max_drop']:g} points not met (--allow-drop)[/]")
    if not verdict.passed:
        console.print(f"[yellow]warning:[/] {verdict.line()}", highlight=False)
    console.print(f"wrote {path}")


def _check_suffix(cfg, output: Path) -> None:
    from edgetl.errors import ConfigError
    from edgetl.quantize import Backend, QuantPrecision, default_suffix

    if cfg.backend is Backend.TENSORRT and cfg.precision is QuantPrecision.FP16 and output.suffix:
        raise ConfigError("TensorRT fp16 is a builder flag: give -o a directory for the trtexec build bundle")
    want = default_suffix(cfg)  # tensorrt int8: a Q/DQ .onnx, or any other name for a build bundle
    if want and cfg.backend is not Backend.TENSORRT and output.suffix != want:
        raise ConfigError(f"-o for backend {cfg.backend.value} must end in {want}, got {output.name}")


def _mb(n) -> str:
    return f"{n / 1e6:.2f} MB" if n else "-"
