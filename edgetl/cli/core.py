"""Foundation commands: finetune, eval, models, datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table

ModelArg = Annotated[str, typer.Argument(help="Model file (.pt, .pt2, TorchScript, .onnx, .xml ...) or zoo name.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Built-in dataset name, image folder or .npz file.")]
UnsafeOpt = Annotated[bool, typer.Option("--unsafe-pickle", help="Allow loading a fully pickled nn.Module "
                                         "(runs code from the file: only for files you trust).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the train/val/test split.")]


def _set_threads() -> None:
    import torch

    torch.set_flush_denormal(True)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)
    app.command("eval")(eval_cmd)
    app.command("models")(models_cmd)
    app.command("datasets")(datasets_cmd)


def finetune_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo architecture (pretrained where offline weights exist) or a model file.")] = "efficientnet_lite0",
    data: DataOpt = "mnist5k",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fine-tuned model (.pt).")] = Path("teacher.pt"),
    epochs: Annotated[int, typer.Option(help="Epochs per unfreezing phase.")] = 2,
    head_epochs: Annotated[int, typer.Option(help="Epochs of head-only training on cached features.")] = 5,
    resolution: Annotated[Optional[int], typer.Option(help="Square input side (default: from the data).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of the unfreezing phases.")] = 1e-3,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a pretrained model on a dataset (head first, then progressive unfreezing)."""

    def body():
        from edgetl.data import load_data
        from edgetl.errors import ConfigError
        from edgetl.finetune import FinetuneConfig, finetune
        from edgetl.models import load_model, save_model

        _set_threads()
        if output.exists() and not overwrite:
            raise ConfigError(f"{output} exists; pass --overwrite to replace it")
        from edgetl.fileio import check_output

        check_output(output)  # parent, writability, name length: before any work
        cfg = FinetuneConfig(resolution=resolution, epochs=epochs, head_epochs=head_epochs, lr=lr, seed=seed)
        splits = load_data(data, seed=seed)
        src = model if not Path(model).exists() else load_model(model)
        art = finetune(src, splits, cfg)
        save_model(art, output)
        m = art.history[-1].metrics
        result = {"output": str(output), "arch": art.arch, "data": splits.name,
                  "input_shape": list(art.input_spec.shape), "test_accuracy": m["test_accuracy"],
                  "val_accuracy": m["val_accuracy"], "params": m["params"], "seconds": art.history[-1].seconds}

        def render(console):
            table(console, "fine-tuned", ["model", "data", "input", "val acc", "test acc", "params", "time s"],
                  [[art.arch, splits.name, "x".join(map(str, art.input_spec.shape)), f"{100 * m['val_accuracy']:.2f} %",
                    f"{100 * m['test_accuracy']:.2f} %", f"{m['params']:,}", f"{result['seconds']:.0f}"]])
            console.print(f"saved {output}")

        return result, render

    execute(body, json_=json_, debug=debug)


def eval_cmd(
    model: ModelArg,
    data: Annotated[str, typer.Option("--data", "-d", help="Built-in dataset name, image folder (with or without "
                                      "class folders), .npz named after the inputs, or module:function.")] = "mnist5k",
    split: Annotated[str, typer.Option(help="train, val or test (built-in datasets).")] = "test",
    arch: co.ArchFlag = None,
    arch_args: co.ArchArgsFlag = None,
    unsafe_pickle: UnsafeOpt = False,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads.")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="Run it in this runtime (default: the format's own; "
                                                   "see `edgetl plugins`).")] = None,
    seed: SeedOpt = 0,
    input_: co.InputFlag = None,
    opt_shape: co.OptShapeFlag = None,
    output: co.OutputFlag = None,
    role: co.RoleFlag = None,
    task: co.TaskFlag = None,
    metric: co.MetricFlag = None,
    reference: co.ReferenceFlag = None,
    limit: co.LimitFlag = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate any model: top-1 accuracy of a classifier on a dataset split, or, for any model and task
    (contract flags, --reference), label-free fidelity per output with the task's headline metric."""

    def body():
        from edgetl.data import SPLITS, load_data
        from edgetl.errors import UnknownNameError
        from edgetl.evaluate import evaluate
        from edgetl.models import load_model

        _set_threads()
        flags = co.contract_flags(inputs=input_, opt_shapes=opt_shape, outputs=output, roles=role, task=task)
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        from edgetl.user_arch import parse_arch_args

        args = parse_arch_args(arch_args) or None
        art = load_model(model, arch=arch, unsafe_pickle=unsafe_pickle, arch_args=args)
        if co.wants_contract(flags, art, reference=reference, metric=metric):
            return co.contract_eval(model, art, flags, data=data, reference=reference, metric=metric,
                                    runtime=runtime, threads=threads, limit=limit, arch=arch,
                                    unsafe_pickle=unsafe_pickle, arch_args=args)
        splits = load_data(data, seed=seed)
        r = evaluate(art, splits, split=split, threads=threads, runtime=runtime)
        result = {"model": model, "format": art.format.value, "data": splits.name, **r}

        def render(console):
            table(console, "evaluation", ["model", "format", "data", "split", "accuracy", "loss", "samples"],
                  [[model, art.format.value, splits.name, split, f"{100 * r['accuracy']:.2f} %", r["loss"], r["samples"]]])

        return result, render

    execute(body, json_=json_, debug=debug)


def models_cmd(json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the architectures the zoo can build (and which have offline pretrained weights)."""

    def body():
        from edgetl.models import list_archs

        archs = list_archs()
        result = {"models": [{"name": s.name, "family": s.family, "pretrained": s.pretrained_available,
                              "default_resolution": s.default_resolution, "description": s.description}
                             for s in archs.values()]}

        def render(console):
            table(console, "models", ["name", "family", "pretrained offline"],
                  [[m["name"], m["family"], "yes" if m["pretrained"] else "-"] for m in result["models"]])

        return result, render

    execute(body, json_=json_, debug=debug)


def datasets_cmd(json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the built-in datasets (real data shipped in wheels) and the file layouts accepted."""

    def body():
        from edgetl.data import BUILTIN_DATASETS

        result = {
            "datasets": [{"name": n, "description": d} for n, (_, d) in BUILTIN_DATASETS.items()],
            "files": ["image folder: DIR/CLASS/IMAGE.png", ".npz with arrays x (N,H,W[,C] or N,C,H,W) and y (N)"],
        }

        def render(console):
            table(console, "built-in datasets", ["name", "description"], [[d["name"], d["description"]] for d in result["datasets"]])
            console.print("Also accepted: " + "; ".join(result["files"]))

        return result, render

    execute(body, json_=json_, debug=debug)
