"""``edgetl distill``: teach a small or pruned student from one or more teachers.

Runs the same under ``torchrun --nproc_per_node=N -m edgetl.cli distill ...`` (DistributedDataParallel; rank 0
writes the output and prints the result).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table
from edgetl.cli.config_options import config_options
from edgetl.cli.distill_contract import contract_distill
from edgetl.stages import stage_kind

CONFIG = stage_kind("distill").config_class()  # the registry's config: its fields are the flags


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)


@config_options(CONFIG, flags={"epochs": ("--epochs", "-e")})
@contract_distill  # --input/--outputs/--role/--task: any model, no labels (edgetl/cli/distill_contract.py)
def distill_cmd(
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Teacher model (.pt); repeat for several.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Zoo name (edgetl_tinycnn, mobilenet_v3_small, "
                                         "resnet18 ...) or a model file, e.g. a pruned teacher.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the distilled student (.pt).")],
    data: Annotated[str, typer.Option("--data", "-d", help="Built-in dataset name, image folder or .npz file.")]
    = "mnist5k",
    align_classes: Annotated[bool, typer.Option("--align-classes", help="Match each teacher's outputs to the "
                                                "data's classes by label name (teachers ordering them "
                                                "differently).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUTPUT.resume.")]
    = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (and discard an "
                                            "interrupted run's state).")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
    *,
    options: dict,
) -> None:
    """Distil one or more teachers into a student (a zoo architecture or a pruned model)."""
    main_rank = int(os.environ.get("RANK", "0")) == 0

    def body():
        import torch

        from edgetl.data import load_data
        from edgetl.distill import Teacher, class_map_by_name, distill, resume_path
        from edgetl.errors import ConfigError
        from edgetl.models import load_model, save_model
        from edgetl.stages import StageContext

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
        cfg = CONFIG(**options, student=student, checkpoint=state, resume=resume,
                     history_path=output.with_name(output.name + ".history.json"))
        splits = load_data(data, seed=cfg.seed)
        teachers = []
        for t in teacher:
            art = load_model(t)
            teachers.append(Teacher(art, class_map=class_map_by_name(art.labels, splits.classes)
                                    if align_classes else None))
        art = distill(teachers[0], cfg, data=splits, ctx=StageContext(teachers=tuple(teachers)))
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
