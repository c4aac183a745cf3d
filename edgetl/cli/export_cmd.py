"""``edgetl export``: one model to one or more deployment formats, each checked against the source.

Example::

    edgetl export teacher.pt --format onnx,openvino,ort,executorch,tensorrt -o deploy/ --dynamic-batch
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def export_cmd(
    model: Annotated[str, typer.Argument(help="Model to export: edgetl checkpoint (.pt), state dict with --arch, "
                                         ".pt2, or an ONNX file (for ort / tensorrt / openvino).")],
    format_: Annotated[str, typer.Option("--format", "-f", help="Comma-separated formats: onnx, openvino, ort, "
                                         "executorch, tensorrt, or a plug-in's (see `edgetl plugins`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (must not exist unless "
                                         "--overwrite).")],
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default 18; 17 for TensorRT 8.5 "
                                                 "on JetPack 5).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Keep the batch dimension dynamic "
                                                "(default: fixed batch 1).")] = False,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="Largest batch of a dynamic batch "
                                                     "(TensorRT profile, ExecuTorch memory plan).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="fp32, fp16 or int8 (openvino: fp32/fp16 "
                                                     "weights; tensorrt: all three, int8 from a Q/DQ model).")]
    = None,
    dla_core: Annotated[Optional[int], typer.Option("--dla-core", help="TensorRT on Jetson: build for this DLA "
                                                    "core, with GPU fallback.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset for the parity inputs (default: the "
                                                "one recorded in the model's history, else seeded synthetic "
                                                "images).")] = None,
    no_parity: Annotated[bool, typer.Option("--no-parity", help="Skip the output comparison with the source "
                                            "model.")] = False,
    arch: co.ArchFlag = None,
    arch_args: co.ArchArgsFlag = None,
    unsafe_pickle: Annotated[bool, typer.Option("--unsafe-pickle", help="Allow loading a fully pickled nn.Module "
                                                "(runs code from the file: only for files you trust).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the dataset's train/val/test split.")] = 0,
    input_: co.InputFlag = None,
    opt_shape: co.OptShapeFlag = None,
    min_shape: co.MinShapeFlag = None,
    max_shape: co.MaxShapeFlag = None,
    role: co.RoleFlag = None,
    task: co.TaskFlag = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory (only "
                                            "once the new one is complete).")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a model to deployment formats; every format that runs here is parity-checked against the source."""

    def body():
        options = _check_request(format_, output, overwrite=overwrite, opset=opset, dynamic_batch=dynamic_batch,
                                 max_batch=max_batch, precision=precision, dla_core=dla_core, parity=not no_parity)
        flags = co.contract_flags(inputs=input_, opt_shapes=opt_shape, min_shapes=min_shape, max_shapes=max_shape,
                                  roles=role, task=task)  # -o is the directory
        art, splits = _load(model, flags, arch=arch, arch_args=arch_args, unsafe_pickle=unsafe_pickle,
                            data=None if no_parity else data, seed=seed)
        co.check_export_shapes(art, format_)  # bounds the formats need, before any export
        exported, failed = _export(art, format_, output, options=options, data=splits, overwrite=overwrite,
                                   model=model)
        return _report(model, output, exported, failed)

    execute(body, json_=json_, debug=debug)


def _check_request(format_: str, output: Path, *, overwrite: bool, **values):
    """Cheap checks first: a wrong name or option, a missing extra or an existing output must not wait for the
    model to load. Returns the :class:`ExportOptions` of the options given."""
    from edgetl.fileio import check_output
    from exporters.base import ExportOptions, check_request

    options = ExportOptions.from_mapping({k: v for k, v in values.items() if v is not None})
    check_request(format_, options)
    check_output(output, kind="dir", overwrite=overwrite)  # exists, parent, writability, name length
    return options


def _load(model: str, flags, *, arch: str | None, arch_args: str | None, unsafe_pickle: bool, data: str | None,
          seed: int):
    """The model with its contract, and the parity inputs when ``data`` names them."""
    import torch

    from edgetl.models import load_model
    from edgetl.user_arch import parse_arch_args

    torch.set_flush_denormal(True)
    art = load_model(model, arch=arch, unsafe_pickle=unsafe_pickle, arch_args=parse_arch_args(arch_args) or None)
    if art.input_spec is None or co.flags_given(flags):
        art = co.with_contract(art, flags)  # a contradiction with the file: one line, before any export
    if data is None:
        return art, None
    if art.input_spec is None:  # any model: the data forms of edgetl.inputs, read against its contract
        from edgetl.inputs import load_inputs

        return art, load_inputs(data, contract=art.contract)
    from edgetl.data import load_data

    return art, load_data(data, seed=seed)


def _export(art, format_: str, output: Path, *, options, data, overwrite: bool, model: str) -> tuple[list, dict]:
    """Every format's artifact, and each failed format's error (the others are still delivered)."""
    from edgetl.errors import PartialExportError
    from exporters.base import export

    try:
        exported = export(art, format_, output, options=options, data=data, overwrite=overwrite,
                          name=Path(model).stem if Path(model).exists() else None)
    except PartialExportError as e:
        if not e.results:
            raise
        return e.results, e.failures
    return exported, {}


def _report(model: str, output: Path, exported: list, failed: dict):
    """The result (each format's row, or its error) and its rendering."""
    rows = [_row(a) for a in exported]
    first = next((r["parity"] for r in rows if r["parity"]), None)
    result = {"output": str(output), "model": model, "exports": rows, "failed": failed,
              "parity_inputs": first.get("inputs") if first else None}
    if failed:
        result["exit_code"] = 1  # some formats failed: the others are delivered, the command did not succeed

    def render(console):
        from rich.markup import escape

        table(console, f"export of {model}", ["format", "file", "precision", "max abs err", "max rel err",
                                              "top-1 agree", "checked with"],
              [[r["format"], Path(r["path"]).name, r["precision"] or "-", *_parity_cells(r["parity"])] for r in rows])
        if result["parity_inputs"]:
            console.print(f"parity inputs: {result['parity_inputs']}")
        for r in rows:
            note = (r["parity"] or {}).get("note")
            if note:
                console.print(f"{r['format']}: {note}")
        for name, f in failed.items():
            console.print(f"[bold red]{name} failed:[/] {escape(f['error_type'] + ': ' + f['error'])}")
        console.print(f"wrote {output}" + (f" without {', '.join(failed)}" if failed else ""))

    return result, render


def _row(a) -> dict:
    rec = a.history[-1]
    return {"format": rec.options.get("format"), "artifact_format": a.format.value, "path": str(a.path),
            "precision": rec.options.get("precision"), "seconds": rec.seconds, "parity": rec.metrics.get("parity")}


def _parity_cells(p: dict | None) -> list[str]:
    if not p:
        return ["-", "-", "-", "not checked (--no-parity)"]
    if not p.get("checked"):
        return ["-", "-", "-", p.get("reason", "not checked")]
    head = p.get("headline") or {}
    if p.get("top1_agreement") is not None:
        agree = f"{100 * p['top1_agreement']:.1f} %"
    elif head.get("value") is not None and head.get("metric") != "snr_db":  # a segmenter's mIoU, a detector's F1
        agree = f"{head['metric']} {100 * head['value']:.1f} %"
    else:
        agree = "-"
    return [f"{p['max_abs_error']:.3g}", f"{p['max_rel_error']:.3g}", agree,
            p.get("runtime", "?") + (f" ({p['checked_file']})" if p.get("checked_file") else "")]
