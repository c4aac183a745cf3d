"""``edgetl prune``: structured channel pruning (LRP by default) of a PyTorch model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli import device_options as do
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table
from edgetl.cli.config_options import config_options
from edgetl.cli.prune_contract import contract_prune
from edgetl.stages import stage_kind

CONFIG = stage_kind("prune").config_class()  # the registry's config: its fields are the flags


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)


@config_options(CONFIG)
@contract_prune  # --input/--outputs/--role/--task: any model, scored label-free (edgetl/cli/prune_contract.py)
def prune_cmd(
    model: Annotated[str, typer.Argument(help="PyTorch model to prune (edgetl .pt checkpoint, state dict with --arch, ...).")],
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset: reference samples, accuracy and recovery.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pruned model (.pt).")],
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Prune each layer by the ratio instead of "
                                            "ranking channels globally.")] = False,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Layer name pattern to leave unpruned (repeatable, "
                                                        "shell-style, e.g. 'features.0*').")] = None,
    arch: co.ArchFlag = None,
    arch_args: co.ArchArgsFlag = None,
    target_latency_ms: Annotated[Optional[float], typer.Option(
        "--target-latency-ms", help="Latency to reach: p50 ms at batch 1 on --runtime with --threads; widths are "
        "chosen against a per-layer latency table measured there, then the pruned model is measured and the "
        "budget tightened until it holds.")] = None,
    device: Annotated[str, typer.Option("--device", "-D", help="Device profile of the latency target "
                                        "(see `edgetl devices`).")] = "x86-cpu",
    runtime: Annotated[Optional[str], typer.Option(help="Runtime of the latency target: onnxruntime, openvino or "
                                                   "torch (default: the profile's first of these, torch last).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads for the latency target (default: the "
                                                   "profile's).")] = None,
    max_iterations: Annotated[int, typer.Option(help="Prune-measure rounds before a missed latency target is an "
                                                "error.")] = 4,
    latency_cache: Annotated[Optional[Path], typer.Option(help="Latency table cache directory (default: "
                                                          "$EDGETL_LATENCY_CACHE or ~/.cache/edgetl/latency).")] = None,
    latency_precision: Annotated[str, typer.Option(help="Precision the latency target is for: fp32, or int8 (the "
                                                   "model quantized by edgetl's int8 path for --runtime, then "
                                                   "measured).")] = "fp32",
    host: Annotated[Optional[str], typer.Option("--host", "-H", help="Measure the latency table and the pruned "
                                                "models on this board over SSH.")] = None,
    ssh_config: do.SshConfigOpt = None,
    port: do.PortOpt = None,
    remote_edgetl: do.RemoteEdgetlOpt = None,
    quick_latency: Annotated[bool, typer.Option("--quick-latency", help="Few timing calls per point and a coarse "
                                                "width grid (smoke runs, tests; not for published figures).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
    *,
    options: dict,
) -> None:
    """Remove the least relevant channels; writes a genuinely smaller model that reloads safely."""

    def body():
        _check_request(output, options, overwrite=overwrite, target_latency_ms=target_latency_ms, host=host)
        latency = None
        if target_latency_ms is not None:
            from edgetl.cli.latency_target import LatencyTarget

            latency = LatencyTarget.from_options(target_ms=target_latency_ms, device=device, runtime=runtime,
                                                 threads=threads, max_iterations=max_iterations,
                                                 cache_dir=latency_cache, quick=quick_latency,
                                                 precision=latency_precision, host=host,
                                                 ssh_options=do.ssh_options(ssh_config=ssh_config, port=port,
                                                                            remote_edgetl=remote_edgetl))
        cfg = _config(options, layerwise=layerwise, ignore=ignore)
        pruned, splits, latency_result = _run(model, data, cfg, arch=arch, arch_args=arch_args, latency=latency,
                                              output=output)
        return _report(pruned, cfg, output, data_name=splits.name, latency_result=latency_result)

    execute(body, json_=json_, debug=debug)


def _check_request(output: Path, options: dict, *, overwrite: bool, target_latency_ms: float | None,
                   host: str | None) -> None:
    """The output and the combination of options, before any model or data loads."""
    from edgetl.errors import ConfigError
    from edgetl.fileio import check_output

    check_output(output, overwrite=overwrite)  # exists, parent, writability, name length: before any work
    if output.suffix.lower() not in (".pt", ".pth"):
        raise ConfigError(f"the pruned model is saved as an edgetl checkpoint; give a .pt output, not {output.name}")
    if "ratio" in options and ("target_flops" in options or "target_params" in options
                               or target_latency_ms is not None):
        raise ConfigError("give either --ratio or a target (--target-flops / --target-params / "
                          "--target-latency-ms), not both")
    if host and target_latency_ms is None:
        raise ConfigError("--host measures a latency target on a board; give --target-latency-ms too")


def _config(options: dict, *, layerwise: bool, ignore: list[str] | None):
    from edgetl.prune import Scope, layers_matching

    opts = dict(options)
    if opts.get("round_to") == 1:
        opts["round_to"] = None  # widths are not rounded: the same as rounding to 1, recorded as none
    return CONFIG(**opts, scope=Scope.LAYERWISE if layerwise else Scope.GLOBAL,
                  ignore=layers_matching(*ignore) if ignore else None)


def _run(model: str, data: str, cfg, *, arch: str | None, arch_args: str | None, latency, output: Path):
    """Load, prune (to the latency target when there is one) and save; returns (pruned, splits, latency report)."""
    import torch

    from edgetl.data import load_data
    from edgetl.models import save_model
    from edgetl.prune import prune

    torch.set_flush_denormal(True)
    art = co.load_with_arch(model, arch=arch, arch_args=arch_args)
    splits = load_data(data, seed=cfg.seed)
    if latency is not None:
        pruned, latency_result = latency.prune(art, cfg, splits)
    else:
        pruned, latency_result = prune(art, cfg, data=splits), None
    save_model(pruned, output)
    return pruned, splits, latency_result


def _report(pruned, cfg, output: Path, *, data_name: str, latency_result: dict | None):
    rec = pruned.history[-1]
    m = rec.metrics
    result = {"output": str(output), "arch": pruned.arch, "data": data_name, "file_bytes": output.stat().st_size,
              "seconds": rec.seconds, **{k: v for k, v in m.items() if k not in ("widths_before", "widths_after")},
              "widths_before": m["widths_before"], "widths_after": m["widths_after"]}
    if latency_result is not None:
        result["latency"] = latency_result
    return result, lambda console: _render(console, cfg, m, result, latency_result, output, rec.seconds)


def _render(console, cfg, m: dict, result: dict, latency_result: dict | None, output: Path, seconds: float) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    table(console, f"pruned with {cfg.criterion} (ratio {m['ratio']:.3f})", ["", "before", "after", "change"], [
        ["params", f"{m['params_before']:,}", f"{m['params_after']:,}", f"-{100 * m['params_reduction']:.1f} %"],
        ["MACs", f"{m['macs_before']:,}", f"{m['macs_after']:,}", f"-{100 * m['flops_reduction']:.1f} %"],
        ["weights bytes", f"{m['bytes_before']:,}", f"{m['bytes_after']:,}", ""],
        ["val accuracy", pct(m["val_accuracy_before"]), pct(m["val_accuracy_after"]), ""],
    ])
    for s in m["scoring"][:1]:
        if s.get("cost_ratio") is not None:
            console.print(f"scoring cost: {s['cost_ratio']:.2f}x one forward+backward; "
                          f"canonizers: {', '.join(s.get('canonizers', [])) or 'none'}")
        for note in s.get("notes", []):
            console.print(f"note: {note}")
    if latency_result is not None:
        _render_latency(console, latency_result)
    if m["capped_layers"]:
        console.print(f"per-layer cap kept channels in {len(m['capped_layers'])} layers")
    console.print(f"saved {output} ({result['file_bytes']:,} bytes, {seconds:.1f} s)")


def _render_latency(console, lr: dict) -> None:
    table(console, f"latency target {lr['target_ms']:.4g} ms (p50, {lr['runtime']} {lr['precision']}, threads "
          f"{lr['threads'] or 'all'})", ["iteration", "budget ms", "predicted ms", "measured p50 ms"],
          [[i["iteration"], f"{i['budget_ms']:.4g}", f"{i['predicted_ms']:.4g}", f"{i['measured_ms']:.4g}"]
           for i in lr["iterations"]])
    console.print(f"unpruned p50 {lr['unpruned_p50_ms']:.4g} ms; latency table: "
                  f"{lr['table']['measured_points']} points measured, {lr['table']['cached_points']} "
                  f"from the cache")
