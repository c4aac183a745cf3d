"""``edgetl prune``: structured channel pruning (LRP by default) of a PyTorch model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)


def prune_cmd(
    model: Annotated[str, typer.Argument(help="PyTorch model to prune (edgetl .pt checkpoint, state dict with --arch, ...).")],
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset: reference samples, accuracy and recovery.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pruned model (.pt).")],
    criterion: Annotated[str, typer.Option(help="lrp, l1, l2, taylor or random.")] = "lrp",
    ratio: Annotated[Optional[float], typer.Option(help="Share of prunable channels to remove, in (0, 1). "
                                                   "Default 0.5 unless a target is given.")] = None,
    target_flops: Annotated[Optional[float], typer.Option(help="Fraction of the original FLOPs to keep; the "
                                                          "ratio is searched.")] = None,
    target_params: Annotated[Optional[float], typer.Option(help="Fraction of the original parameters to keep.")] = None,
    steps: Annotated[int, typer.Option(help="Iterative steps (criterion recomputed each step).")] = 1,
    recover_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after each step (0: none).")] = 0,
    recover_lr: Annotated[float, typer.Option(help="Learning rate of recovery fine-tuning.")] = 1e-3,
    samples_per_class: Annotated[int, typer.Option(help="Reference samples per class (train split).")] = 10,
    composite: Annotated[str, typer.Option(help="LRP composite: epsilon-plus-flat or epsilon-alpha2-beta1.")] = "epsilon-plus-flat",
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Prune each layer by the ratio instead of "
                                            "ranking channels globally.")] = False,
    normalize: Annotated[str, typer.Option(help="Per-layer score normalisation before global ranking: none, "
                                           "mean, sum, max.")] = "none",
    max_layer_ratio: Annotated[float, typer.Option(help="No layer loses more than this share of its channels.")] = 0.9,
    round_to: Annotated[int, typer.Option(help="Keep widths multiples of this (1: no rounding).")] = 8,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Layer name pattern to leave unpruned (repeatable, "
                                                        "shell-style, e.g. 'features.0*').")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture of a plain state-dict file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split, reference samples and random scores.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove the least relevant channels; writes a genuinely smaller model that reloads safely."""

    def body():
        import torch

        from edgetl.data import load_data
        from edgetl.errors import ConfigError
        from edgetl.models import load_model, save_model
        from edgetl.prune import PruneConfig, Scope, layers_matching, prune

        torch.set_flush_denormal(True)
        if output.exists() and not overwrite:
            raise ConfigError(f"{output} exists; pass --overwrite to replace it")
        from edgetl.fileio import check_output

        check_output(output)  # parent, writability, name length: before any work
        if output.suffix.lower() not in (".pt", ".pth"):
            raise ConfigError(f"the pruned model is saved as an edgetl checkpoint; give a .pt output, not {output.name}")
        if ratio is not None and (target_flops is not None or target_params is not None):
            raise ConfigError("give either --ratio or a target (--target-flops / --target-params), not both")
        cfg = PruneConfig(
            criterion=criterion, ratio=0.5 if ratio is None else ratio, target_flops=target_flops,
            target_params=target_params, steps=steps, recover_epochs=recover_epochs, recover_lr=recover_lr,
            samples_per_class=samples_per_class, composite=composite, scope=Scope.LAYERWISE if layerwise else Scope.GLOBAL,
            normalize=normalize, max_layer_ratio=max_layer_ratio, round_to=round_to if round_to > 1 else None,
            ignore=layers_matching(*ignore) if ignore else None, seed=seed)
        art = load_model(model, arch=arch)
        splits = load_data(data, seed=seed)
        pruned = prune(art, cfg, data=splits)
        save_model(pruned, output)
        rec = pruned.history[-1]
        m = rec.metrics
        result = {"output": str(output), "arch": pruned.arch, "data": splits.name, "file_bytes": output.stat().st_size,
                  "seconds": rec.seconds, **{k: v for k, v in m.items() if k not in ("widths_before", "widths_after")},
                  "widths_before": m["widths_before"], "widths_after": m["widths_after"]}

        def render(console):
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
            if m["capped_layers"]:
                console.print(f"per-layer cap kept channels in {len(m['capped_layers'])} layers")
            console.print(f"saved {output} ({result['file_bytes']:,} bytes, {rec.seconds:.1f} s)")

        return result, render

    execute(body, json_=json_, debug=debug)
