"""``edgetl run``: chain the stages with a recipe, resumably, and write one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table

OutputsFlag = Annotated[Optional[list[str]], typer.Option(
    "--outputs", help="Which outputs the run's metric looks at: NAME[,NAME] (or an index such as 0); overrides the "
    "recipe's outputs: (-o is the run directory).")]


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)


def run_cmd(
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Built-in recipe name or recipe YAML file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model (overrides the recipe's).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset (overrides the recipe's).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (resumable).")] = None,
    from_stage: Annotated[Optional[str], typer.Option("--from", help="Rerun from this stage on.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved plan and stop.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the built-in recipes.")] = False,
    arch: co.ArchFlag = None,
    arch_args: co.ArchArgsFlag = None,
    task: co.TaskFlag = None,
    input_: co.InputFlag = None,
    outputs: OutputsFlag = None,
    role: co.RoleFlag = None,
    opt_shape: co.OptShapeFlag = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run a recipe: prune -> distill -> quantize -> export -> bench, then write report.{md,html,json}.

    Any model, any task: --task, --input, --outputs, --role (the recipe's task:, inputs:, outputs:, roles:) make
    every score the task's fidelity against the source model on held-out inputs (e.g. mIoU for segmentation).
    """

    def body():
        from benchmarks.contention import choose_omp_wait_policy

        choose_omp_wait_policy()  # before torch starts OpenMP: PASSIVE on a busy machine (see benchmarks/contention)
        import torch

        from edgetl.errors import ConfigError
        from edgetl.pipeline import plan, run_recipe
        from edgetl.recipe import list_recipes, load_recipe

        torch.set_flush_denormal(True)
        if list_:
            names = list_recipes()
            return {"recipes": sorted(names)}, lambda c: table(c, "recipes", ["name"], [[n] for n in sorted(names)])
        if recipe is None:
            raise ConfigError("give a recipe: --recipe NAME|FILE (see --list)")
        from edgetl.user_arch import parse_arch_args

        r = load_recipe(recipe, model=model, data=data, arch=arch, arch_args=parse_arch_args(arch_args) or None,
                        task=task, inputs=input_ or (), outputs=outputs or (), roles=role or (),
                        opt_shapes=opt_shape or ())
        if dry_run:
            steps = plan(r, output)
            result = {"recipe": r.to_dict(), "plan": steps}

            def render(c):
                table(c, f"plan: {r.name}", ["#", "stage", "options", "key", "done"],
                      [[s["index"], s["stage"], s["options"], s["key"], "yes" if s["done"] else "-"] for s in steps])

            return result, render
        if output is None:
            raise ConfigError("give a run directory with -o RUN_DIR")
        from edgetl.fileio import check_output

        check_output(output, kind="dir")  # before the run directory is claimed or any stage runs
        _precheck_sources(r.model, r.data)
        res = run_recipe(r, output, from_stage=from_stage)
        rep = res.report
        render = _render(rep, r.name, output)
        return {"run_dir": str(output), "report": rep}, render

    execute(body, json_=json_, debug=debug)


def _render(rep: dict, name: str, output: Path):
    """The run's table (its score column named by the run's metric), warnings and recommendation."""
    metric = rep.get("metric") or {}
    heading = metric.get("label", "acc %") if metric.get("reference") == "source" else "acc %"

    def render(c):
        table(c, f"run {name} (files relative to {output})", ["role", "file", "format", "runtime", heading,
                                                              "p90 ms", "timing"],
              [[a["role"], a.get("file") or "-", a["format"], a["runtime"],
                f"{100 * a['accuracy']:.2f}" if a["accuracy"] is not None else "-", a["p90_ms"],
                "contended" if a.get("contended") else "clean"]
               for a in rep["artifacts"]])
        from rich.markup import escape

        for w in rep.get("warnings", []):
            c.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, markup=True)
        if rep.get("recommendation"):
            c.print(rep["recommendation"]["line"], highlight=False, markup=False)
        c.print(f"report: {output / 'report.html'}")

    return render


def _precheck_sources(model: str | None, data: str | None) -> None:
    """Refuse a model or dataset that cannot exist before the run directory is claimed (a refused run must leave
    nothing behind that would make the corrected rerun look like another run's directory)."""
    from edgetl.data import BUILTIN_DATASETS
    from edgetl.errors import ConfigError, InputFileError, UnknownNameError
    from edgetl.models import list_archs

    if model is None:
        raise ConfigError("no model: give one with --model, or set 'model:' in the recipe")
    if data is None:
        raise ConfigError("no data: give it with --data, or set 'data:' in the recipe")
    if not Path(model).exists():
        if any(sep in model for sep in ("/", "\\")) or "." in model:
            raise InputFileError(f"model file not found: {model}; give a path, or a zoo name (see `edgetl models`)")
        if model not in list_archs():
            raise UnknownNameError("model", model, list_archs(), hint="Or give a model file.")
    from edgetl.inputs import _is_function_spec

    if not Path(data).exists() and data not in BUILTIN_DATASETS and not _is_function_spec(data):
        if any(sep in data for sep in ("/", "\\")) or "." in data:
            raise InputFileError(f"dataset not found: {data}")
        raise UnknownNameError("dataset", data, BUILTIN_DATASETS, hint="Or give an image folder or an .npz file.")
