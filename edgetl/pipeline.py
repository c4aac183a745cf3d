"""``edgetl run``: execute a recipe stage by stage, resumably, and write one report.

Each stage's output lives under ``RUN_DIR/stages/NN-KIND-KEY`` where KEY hashes the stage's input (the
previous stage's key, itself rooted in the model file's bytes and the data), its options and the seed. A
stage directory appears whole (atomic rename) or not at all, so re-running skips finished stages and a killed
run continues where it stopped; distillation keeps its resume checkpoint in ``RUN_DIR/work/KEY`` so a run
killed mid-training continues from the last finished epoch.

The parts: :mod:`edgetl.run_stages` (how each stage kind runs), :mod:`edgetl.run_gates` (the quality gate after
each compress stage), :mod:`edgetl.run_bench` (the bench stage and its baselines), :mod:`edgetl.run_search`
(the pruning-ratio search of ``budgets``) and :mod:`edgetl.run_report` (the one report).

Example::

    result = run_recipe(load_recipe("cpu-openvino-int8", model="teacher.pt"), "runs/a")
    result.report["recommendation"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format
from edgetl.data import BUILTIN_DATASETS, DataSplits, check_classes, load_data
from edgetl.errors import BudgetError, ConfigError
from edgetl.fileio import atomic_dir, write_json
from edgetl.models import load_model
from edgetl.recipe import Recipe, Stage, validate
from edgetl.run_bench import store_results
from edgetl.run_gates import gate
from edgetl.run_stages import EXECUTORS, exec_stage, quantize_into
from edgetl.run_task import TaskSplits, load_task_splits, task_path, with_contract
from edgetl.stages import stage_kind

__all__ = ["RunResult", "StageOutcome", "plan", "quantize_into", "run_recipe"]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
STAGE_FILE = "stage.json"
CODE_VERSION = "1"  # bump when a stage's semantics change so old caches are not reused


@dataclass
class StageOutcome:
    kind: str
    key: str
    directory: Path
    cached: bool
    seconds: float
    artifacts: list[Artifact] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    recipe: Recipe
    stages: list[StageOutcome]
    report: dict[str, Any]
    budget_met: bool | None = None


# --------------------------------------------------------------------------- keys and plan
def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:12]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _root_key(recipe: Recipe) -> str:
    model = recipe.model
    if model is None:
        raise ConfigError("no model: give one with --model, or set 'model:' in the recipe")
    if recipe.data is None:
        raise ConfigError("no data: give it with --data, or set 'data:' in the recipe")
    mpath = Path(model)
    model_id = _file_digest(mpath) if mpath.exists() else f"zoo:{model}"
    dpath = Path(recipe.data)
    data_id = _file_digest(dpath) if dpath.is_file() else str(recipe.data)
    contract = recipe.contract_keys()  # scored by fidelity: another contract is another run (classifiers: none)
    if contract or recipe.arch:
        return _hash("root", CODE_VERSION, model_id, data_id, recipe.seed, contract, recipe.arch, recipe.arch_args)
    return _hash("root", CODE_VERSION, model_id, data_id, recipe.seed)


def plan(recipe: Recipe, run_dir: str | Path | None = None, *, ratio: float | None = None) -> list[dict[str, Any]]:
    """The resolved stages with their cache keys and whether each is already done in ``run_dir``."""
    key = _root_key(recipe)
    out = []
    for i, stage in enumerate(recipe.stages, 1):
        stage = _with_ratio(stage, ratio)
        key = _stage_key(key, stage, recipe)
        d = Path(run_dir) / "stages" / f"{i:02d}-{stage.kind}-{key}" if run_dir else None
        out.append({"index": i, "stage": stage.kind, "options": stage.options, "key": key,
                    "directory": str(d) if d else None, "done": bool(d and (d / STAGE_FILE).exists())})
    return out


def _stage_key(previous: str, stage: Stage, recipe: Recipe) -> str:
    """A stage's cache key: its input's key, its options, and the recipe budget that changes its output (the
    quantize budget drives the fallback that keeps layers in float; the other budgets only judge)."""
    budget = recipe.budgets.stages.get(stage.kind) if stage.kind == "quantize" else None
    return _hash(previous, stage.canonical()) if budget is None else _hash(previous, stage.canonical(), budget)


def _with_ratio(stage: Stage, ratio: float | None) -> Stage:
    """The prune stage at the pruning ratio the budget search tries (its targets dropped)."""
    if ratio is None or stage.kind != "prune":
        return stage
    opts = {k: v for k, v in stage.options.items() if k not in ("target_flops", "target_params")}
    config = None
    if stage.config is not None:
        config = dataclasses.replace(stage.config, ratio=ratio, target_flops=None, target_params=None)
    return Stage("prune", {**opts, "ratio": ratio}, config=config)


# --------------------------------------------------------------------------- run directory ownership
def _claim(run_dir: Path, recipe: Recipe) -> None:
    """A run directory belongs to one recipe; refuse another's before touching anything."""
    meta = run_dir / RUN_FILE
    if meta.exists():
        try:
            owner = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            raise ConfigError(f"{meta} is unreadable; choose a new run directory (-o)") from None
        if owner.get("fingerprint") != recipe.fingerprint():
            raise ConfigError(
                f"run directory {run_dir} holds a run of recipe {owner.get('recipe', {}).get('name')!r} "
                f"({owner.get('fingerprint')}), not of {recipe.name!r} ({recipe.fingerprint()}); "
                "choose another -o (nothing was changed)"
            )
        if owner.get("model") != recipe.model or owner.get("data") != recipe.data:
            raise ConfigError(
                f"run directory {run_dir} was made for model {owner.get('model')!r} on {owner.get('data')!r}, not "
                f"{recipe.model!r} on {recipe.data!r}; choose another -o (nothing was changed)"
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists, is not empty and is no edgetl run directory; choose another -o")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(meta, {"fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict(), "model": recipe.model,
                      "data": recipe.data, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# --------------------------------------------------------------------------- the run
@dataclass
class _Context:
    recipe: Recipe
    run_dir: Path
    data: DataSplits | TaskSplits  # labelled splits (top-1), or inputs scored against the source (edgetl.run_task)
    source: Artifact  # the user's model, the reference for accuracy and agreement
    current: Artifact  # the PyTorch model flowing through prune/distill
    quantized: Artifact | None = None
    exports: list[Artifact] = field(default_factory=list)
    rerun: set[str] = field(default_factory=set)
    verdicts: list[Any] = field(default_factory=list)  # quality gates (edgetl.gates.Verdict) of the stages run
    stopped: Any = None  # the verdict that stopped the compressed branch (its later stages are skipped)
    reference_pred: Any = None  # the source model's test-split predictions, computed once
    previous: Artifact | None = None  # the input of the stage running now (what its gate judges it against)


def run_recipe(recipe: Recipe, run_dir: str | Path, *, from_stage: str | None = None) -> RunResult:
    """Run (or resume) ``recipe`` into ``run_dir`` and write ``report.{json,md,html}`` there."""
    run_dir = Path(run_dir)
    if from_stage is not None and recipe.stage(from_stage) is None:
        raise ConfigError(f"--from {from_stage}: the recipe has no such stage; its stages are "
                          f"{', '.join(s.kind for s in recipe.stages)}")
    plan(recipe)  # model and data given
    if any(s.config is None for s in recipe.stages):
        recipe = validate(recipe)  # a recipe made in code: build (and check) its configs once, here
    source = load_model(recipe.model, arch=recipe.arch, arch_args=recipe.arch_args)
    if source.format is not Format.TORCH:
        raise ConfigError(f"edgetl run starts from a PyTorch model; {recipe.model} is {source.format.value}")
    data = _load_data(recipe, source)
    _claim(run_dir, recipe)  # only once model and data are known good: a refused run leaves nothing behind
    kinds = [s.kind for s in recipe.stages]
    rerun = set(kinds[kinds.index(from_stage):]) if from_stage else set()
    ctx = _Context(recipe=recipe, run_dir=run_dir, data=data, source=source, current=source, rerun=rerun)

    budget_met: bool | None = None
    chosen_ratio: float | None = None
    search: list[dict[str, Any]] = []
    if recipe.budgets.active:
        from edgetl.run_search import search_budget

        chosen_ratio, budget_met, search = search_budget(ctx, _run_chain)
    outcomes = _run_chain(ctx, ratio=chosen_ratio)

    from edgetl.run_report import build_report, write_reports

    report = build_report(ctx, outcomes, search=search, chosen_ratio=chosen_ratio, budget_met=budget_met,
                          gates=ctx.verdicts)
    write_reports(report, run_dir)
    store_results(outcomes, run_dir)
    _package(ctx, report)
    result = RunResult(run_dir=run_dir, recipe=recipe, stages=outcomes, report=report, budget_met=budget_met)
    if budget_met is False:
        raise BudgetError(report["budget"]["message"] + f" (report: {run_dir / 'report.md'})")
    return result


def _load_data(recipe: Recipe, source: Artifact) -> DataSplits | TaskSplits:
    """Labelled splits for a classifier scored by top-1; the contract's inputs, scored against the source, for any
    other model (:mod:`edgetl.run_task`)."""
    flags = recipe.contract_flags()
    if not task_path(flags, source):
        data = load_data(recipe.data, seed=recipe.seed)
        check_classes(source.labels, data)
        return data
    if recipe.data in BUILTIN_DATASETS:
        raise ConfigError(f"--data {recipe.data}: a model scored through its contract reads its inputs from an .npz "
                          "named after the inputs, an image folder, or module:function")
    for s in recipe.stages:
        if s.kind == "prune" and s.latency is not None:
            raise ConfigError("the prune stage's target_latency_ms prunes a labelled classifier today; give ratio or "
                              "target_flops for a model scored through its contract")
    return load_task_splits(recipe.data, source, flags, seed=recipe.seed)


def _run_chain(ctx: _Context, *, ratio: float | None, until: int | None = None) -> list[StageOutcome]:
    """Run the stages in order (those of rank ``until`` at most, when given).

    After prune, distill and quantize, the stage's quality gate (:mod:`edgetl.run_gates`) judges its output against
    its input. A prune or distill output past its budget (or collapsed) stops the compressed branch: quantize
    and export are skipped, bench still measures the teacher and the baselines, and the report says why and
    never recommends the failed output. A quantized output past its budget is measured but never recommended.
    """
    key = _root_key(ctx.recipe)
    ctx.current, ctx.quantized, ctx.exports = ctx.source, None, []
    ctx.verdicts, ctx.stopped = [], None
    outcomes: list[StageOutcome] = []
    for i, stage in enumerate(ctx.recipe.stages, 1):
        if until is not None and stage_kind(stage.kind).rank > until:
            break
        stage = _with_ratio(stage, ratio)
        key = _stage_key(key, stage, ctx.recipe)
        if stage.kind == "package":
            continue  # after the report, for the recommended artifact (see _package)
        if ctx.stopped is not None and stage.kind in ("quantize", "export", "distill"):
            log.warning("stage %s skipped: %s", stage.kind, ctx.stopped.line())
            continue
        ctx.previous = ctx.quantized if stage.kind == "export" and ctx.quantized is not None else ctx.current
        outcome = _run_stage(ctx, i, stage, key)
        outcomes.append(outcome)
        gate(ctx, outcome)
    return outcomes



def _run_stage(ctx: _Context, index: int, stage: Stage, key: str) -> StageOutcome:
    d = ctx.run_dir / "stages" / f"{index:02d}-{stage.kind}-{key}"
    done = (d / STAGE_FILE).exists()
    if done and stage.kind not in ctx.rerun:
        outcome = _load_outcome(ctx, stage, key, d)
        log.info("stage %s: cached (%s)", stage.kind, d.name)
    else:
        start = time.perf_counter()
        with atomic_dir(d, overwrite=True) as tmp:
            artifacts, summary = EXECUTORS.get(stage.kind, exec_stage)(ctx, stage, tmp, key)
            write_json(tmp / STAGE_FILE, {"stage": stage.kind, "options": stage.options, "key": key,
                                          "seconds": time.perf_counter() - start, "summary": summary,
                                          "artifacts": [_rel(a, tmp) for a in artifacts]})
        outcome = _load_outcome(ctx, stage, key, d)
        outcome.cached = False
        ctx.rerun.discard(stage.kind)
    _advance(ctx, outcome)
    return outcome


def _rel(a: Artifact, root: Path) -> dict[str, Any]:
    return {"path": str(Path(a.path).relative_to(root)) if a.path else None, "format": a.format.value}


def _load_outcome(ctx: _Context, stage: Stage, key: str, d: Path) -> StageOutcome:
    meta = json.loads((d / STAGE_FILE).read_text())
    arts = [load_model(d / a["path"], arch=ctx.recipe.arch, arch_args=ctx.recipe.arch_args)
            for a in meta["artifacts"] if a["path"]]
    if isinstance(ctx.data, TaskSplits):
        arts = [with_contract(a, ctx.data.contract) for a in arts]
    return StageOutcome(kind=stage.kind, key=key, directory=d, cached=True, seconds=float(meta["seconds"]),
                        artifacts=arts, summary=meta.get("summary", {}))


def _advance(ctx: _Context, outcome: StageOutcome) -> None:
    """A PyTorch result is the model flowing on; a file result the compressed artifact; exports are listed."""
    if outcome.kind == "export":
        ctx.exports = list(outcome.artifacts)
    elif outcome.kind in EXECUTORS or not outcome.artifacts:
        return
    elif outcome.artifacts[0].format is Format.TORCH:
        ctx.current = outcome.artifacts[0]
    else:
        ctx.quantized = outcome.artifacts[0]


def _package(ctx: _Context, report: dict[str, Any]) -> None:
    """A recipe's ``package`` stage: a bundle per device for the recommended artifact, after the report."""
    stage = ctx.recipe.stage("package")
    if stage is None:
        return
    if not report.get("recommendation"):
        log.warning("package skipped: no artifact met the budget, so there is nothing to ship")
        return
    from edgetl.package import package

    bundles = []
    for device in stage.config.devices:
        b = package(ctx.run_dir, ctx.run_dir / f"bundle-{device}", device=device, overwrite=True)
        bundles.append({"device": device, "path": str(Path(b.path).relative_to(ctx.run_dir))})
        log.info("bundle for %s: %s", device, b.path)
    report["bundles"] = bundles
    write_json(ctx.run_dir / "bundles.json", bundles)

