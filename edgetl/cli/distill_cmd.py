"""``edgetl distill``: teach a small or pruned student from one or more teachers.

Runs the same under ``torchrun --nproc_per_node=N -m edgetl.cli distill ...`` (DistributedDataParallel; rank 0
writes the output and prints the result).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    from edgetl.errors import ConfigError

    if text is None or not text.strip():
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, e.g. 0.7,0.3; got {text!r}") from None


def distill_cmd(
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Teacher model (.pt); repeat for several.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Zoo name (edgetl_tinycnn, mobilenet_v3_small, "
                                         "resnet18 ...) or a model file, e.g. a pruned teacher.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the distilled student (.pt).")],
    data: Annotated[str, typer.Option("--data", "-d", help="Built-in dataset name, image folder or .npz file.")]
    = "mnist5k",
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Epochs of the main phase.")] = 10,
    temperature: Annotated[float, typer.Option(help="Softening temperature of the teacher's outputs (> 0).")] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the soft-target loss (0..1); 1 - alpha goes to the "
                                         "labels.")] = 0.9,
    teacher_weights: Annotated[Optional[str], typer.Option(
        "--teacher-weights", help="Comma-separated weight per teacher (default: from each teacher's agreement "
        "with the labels).")] = None,
    align_classes: Annotated[bool, typer.Option("--align-classes", help="Match each teacher's outputs to the "
                                                "data's classes by label name (teachers ordering them "
                                                "differently).")] = False,
    feature_pairs: Annotated[Optional[str], typer.Option(
        "--feature-pairs", help="Hint losses between layers: s_layer:t_layer,... (1x1 adapters where widths "
        "differ).")] = None,
    feature_weight: Annotated[float, typer.Option(help="Weight of the feature-hint loss.")] = 1.0,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 1e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum (0: plain SGD).")] = 0.9,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split across torchrun ranks).")] = 64,
    views: Annotated[str, typer.Option(help="original, augmented (shifted) or both per step.")] = "both",
    unfreeze: Annotated[Optional[str], typer.Option(
        help="Progressive unfreezing phases after the main epochs: trunk fractions, e.g. 0,0.5,1.")] = None,
    unfreeze_epochs: Annotated[int, typer.Option(help="Epochs per unfreezing phase.")] = 1,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better "
                                                    "validation accuracy.")] = None,
    stable_forward: Annotated[bool, typer.Option("--stable-forward", help="Train with normalisation layers in "
                                                 "eval mode (keeps their statistics).")] = False,
    pretrained: Annotated[bool, typer.Option(help="Zoo students start from offline pretrained weights where "
                                             "they exist.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the data split and of training.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUTPUT.resume.")]
    = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (and discard an "
                                            "interrupted run's state).")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Distil one or more teachers into a student (a zoo architecture or a pruned model)."""
    main_rank = int(os.environ.get("RANK", "0")) == 0

    def body():
        import torch

        from edgetl.data import load_data
        from edgetl.distill import DistillConfig, Teacher, class_map_by_name, distill, resume_path
        from edgetl.errors import ConfigError
        from edgetl.models import load_model, save_model

        torch.set_flush_denormal(True)  # random-init students otherwise crawl through denormals on CPU
        state = resume_path(output)
        if output.exists() and not (overwrite or resume):
            raise ConfigError(f"{output} exists; pass --overwrite to replace it")
        from edgetl.fileio import check_output

        check_output(output)  # parent, writability, name length: before any work
        if state.exists() and not (resume or overwrite):
            raise ConfigError(f"an interrupted run left {state}; pass --resume to continue it or --overwrite to "
                              "start over")
        if overwrite and not resume and state.exists() and main_rank:
            state.unlink()
        cfg = DistillConfig(
            epochs=epochs, temperature=temperature, alpha=alpha, feature_pairs=feature_pairs or (),
            feature_weight=feature_weight, teacher_weights=_floats(teacher_weights, "--teacher-weights"),
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, batch_size=batch_size,
            views=views, unfreeze=_floats(unfreeze, "--unfreeze") or (), unfreeze_epochs=unfreeze_epochs,
            patience=patience, stable_forward=stable_forward, pretrained=pretrained, seed=seed, device=device,
            checkpoint=state, resume=resume, history_path=output.with_name(output.name + ".history.json"),
        )
        splits = load_data(data, seed=seed)
        teachers = []
        for t in teacher:
            art = load_model(t)
            teachers.append(Teacher(art, class_map=class_map_by_name(art.labels, splits.classes)
                                    if align_classes else None))
        art = distill(student, teachers, splits, cfg)
        m = art.history[-1].metrics
        if main_rank:
            save_model(art, output)
            state.unlink(missing_ok=True)  # the output is complete: nothing left to resume
        result = {"output": str(output), "student": student, "arch": art.arch, "data": splits.name,
                  "teachers": list(teacher), "input_shape": list(art.input_spec.shape),
                  **{k: m[k] for k in ("test_accuracy", "val_accuracy", "teacher_test_accuracy", "params", "flops",
                                       "best_epoch", "epochs_run", "resumed_from_epoch", "teacher_weights",
                                       "world_size", "rank_samples_last_epoch")},
                  "history": m["history"], "history_file": str(cfg.history_path),
                  "seconds": art.history[-1].seconds}

        def render(console):
            def pct(v):
                return f"{100 * v:.2f} %" if v is not None else "-"

            table(console, "distilled", ["student", "data", "val acc", "test acc", "teacher test acc", "params",
                                         "MFLOPs", "best epoch", "time s"],
                  [[art.arch or student, splits.name, pct(m["val_accuracy"]), pct(m["test_accuracy"]),
                    pct(m["teacher_test_accuracy"]), f"{m['params']:,}", f"{m['flops'] / 1e6:.2f}",
                    m["best_epoch"], f"{result['seconds']:.0f}"]])
            console.print(f"saved {output} (epoch history: {cfg.history_path})")

        return result, (render if main_rank else None)

    execute(body, json_=json_ and main_rank, debug=debug)
