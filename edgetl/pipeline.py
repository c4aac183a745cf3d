"""``edgetl run``: execute a recipe stage by stage, resumably, and write one report.

Each stage's output lives under ``RUN_DIR/stages/NN-KIND-KEY`` where KEY hashes the stage's input (the
previous stage's key, itself rooted in the model file's bytes and the data), its options and the seed. A
stage directory appears whole (atomic rename) or not at all, so re-running skips finished stages and a killed
run continues where it stopped; distillation keeps its resume checkpoint in ``RUN_DIR/work/KEY`` so a run
killed mid-training continues from the last finished epoch.

Example::

    result = run_recipe(load_recipe("cpu-openvino-int8", model="teacher.pt"), "runs/a")
    result.report["recommendation"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format
from edgetl.data import DataSplits, check_classes, load_data
from edgetl.errors import BudgetError, ConfigError
from edgetl.fileio import atomic_dir, write_json
from edgetl.models import load_model, save_model
from edgetl.recipe import Recipe, Stage, build_config, validate
from edgetl.stages import StageContext, stage_kind

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
    return _hash("root", CODE_VERSION, model_id, data_id, recipe.seed)


def plan(recipe: Recipe, run_dir: str | Path | None = None, *, ratio: float | None = None) -> list[dict[str, Any]]:
    """The resolved stages with their cache keys and whether each is already done in ``run_dir``."""
    key = _root_key(recipe)
    out = []
    for i, stage in enumerate(recipe.stages, 1):
        stage = _with_ratio(stage, ratio)
        key = _hash(key, stage.canonical())
        d = Path(run_dir) / "stages" / f"{i:02d}-{stage.kind}-{key}" if run_dir else None
        out.append({"index": i, "stage": stage.kind, "options": stage.options, "key": key,
                    "directory": str(d) if d else None, "done": bool(d and (d / STAGE_FILE).exists())})
    return out


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
    data: DataSplits
    source: Artifact  # the user's model, the reference for accuracy and agreement
    current: Artifact  # the PyTorch model flowing through prune/distill
    quantized: Artifact | None = None
    exports: list[Artifact] = field(default_factory=list)
    rerun: set[str] = field(default_factory=set)
    verdicts: list[Any] = field(default_factory=list)  # quality gates (edgetl.gates.Verdict) of the stages run
    stopped: Any = None  # the verdict that stopped the compressed branch (its later stages are skipped)
    reference_pred: Any = None  # the source model's test-split predictions, computed once


def run_recipe(recipe: Recipe, run_dir: str | Path, *, from_stage: str | None = None) -> RunResult:
    """Run (or resume) ``recipe`` into ``run_dir`` and write ``report.{json,md,html}`` there."""
    run_dir = Path(run_dir)
    if from_stage is not None and recipe.stage(from_stage) is None:
        raise ConfigError(f"--from {from_stage}: the recipe has no such stage; its stages are "
                          f"{', '.join(s.kind for s in recipe.stages)}")
    plan(recipe)  # model and data given
    if any(s.config is None for s in recipe.stages):
        recipe = validate(recipe)  # a recipe made in code: build (and check) its configs once, here
    data = load_data(recipe.data, seed=recipe.seed)
    source = load_model(recipe.model)
    if source.format is not Format.TORCH:
        raise ConfigError(f"edgetl run starts from a PyTorch model; {recipe.model} is {source.format.value}")
    check_classes(source.labels, data)
    _claim(run_dir, recipe)  # only once model and data are known good: a refused run leaves nothing behind
    kinds = [s.kind for s in recipe.stages]
    rerun = set(kinds[kinds.index(from_stage):]) if from_stage else set()
    ctx = _Context(recipe=recipe, run_dir=run_dir, data=data, source=source, current=source, rerun=rerun)

    budget_met: bool | None = None
    chosen_ratio: float | None = None
    search: list[dict[str, Any]] = []
    if recipe.budgets.active:
        chosen_ratio, budget_met, search = _search_budget(ctx)
    outcomes = _run_chain(ctx, ratio=chosen_ratio)

    from edgetl.run_report import build_report, write_reports

    report = build_report(ctx, outcomes, search=search, chosen_ratio=chosen_ratio, budget_met=budget_met,
                          gates=ctx.verdicts)
    write_reports(report, run_dir)
    _store_results(outcomes, run_dir)
    _package(ctx, report)
    result = RunResult(run_dir=run_dir, recipe=recipe, stages=outcomes, report=report, budget_met=budget_met)
    if budget_met is False:
        raise BudgetError(report["budget"]["message"] + f" (report: {run_dir / 'report.md'})")
    return result


def _run_chain(ctx: _Context, *, ratio: float | None, until: int | None = None) -> list[StageOutcome]:
    """Run the stages in order (those of rank ``until`` at most, when given).

    After prune, distill and quantize, the stage's quality gate (:mod:`edgetl.gates`) judges its output against
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
        key = _hash(key, stage.canonical())
        if stage.kind == "package":
            continue  # after the report, for the recommended artifact (see _package)
        if ctx.stopped is not None and stage.kind in ("quantize", "export", "distill"):
            log.warning("stage %s skipped: %s", stage.kind, ctx.stopped.line())
            continue
        outcome = _run_stage(ctx, i, stage, key)
        outcomes.append(outcome)
        _gate(ctx, outcome)
    return outcomes


def _recovered_later(ctx: _Context, kind: str) -> bool:
    kinds = [s.kind for s in ctx.recipe.stages]
    return "distill" in kinds[kinds.index(kind) + 1:]


def _gate(ctx: _Context, outcome: StageOutcome) -> None:
    """Judge a compress stage's output against its input (val split) and record the verdict."""
    from edgetl import gates

    m, kind = outcome.summary, outcome.kind
    if kind == "quantize" and "fp32_accuracy" in m and "accuracy" in m:
        v = gates.check("quantize", before=m["fp32_accuracy"], after=m["accuracy"], agreement=m.get("agreement"),
                        split=m.get("split", "val"), budget=ctx.recipe.stage("quantize").config.max_drop)
    elif kind == "prune" and _recovered_later(ctx, kind):
        return  # a distill stage after it is the recovery: the branch is judged after distillation
    elif kind == "prune" and m.get("val_accuracy_before") is not None and m.get("val_accuracy_after") is not None:
        v = gates.check("prune", before=m["val_accuracy_before"], after=m["val_accuracy_after"])
        c = gates.collapse(gates.prune_points(m), before=m["val_accuracy_before"], num_classes=ctx.data.num_classes)
        if c.collapsed:
            v = dataclasses.replace(v, passed=False, allowed=False, note=c.line())
    elif kind == "distill" and m.get("best_val_accuracy") is not None:
        v = gates.check("distill", before=_accuracy(ctx.source, ctx.data), after=m["best_val_accuracy"])
    else:
        return
    ctx.verdicts.append(v)
    if not v.allowed and kind in ("prune", "distill"):
        ctx.stopped = v
        ctx.current = ctx.source  # nothing downstream builds on the failed output


def _run_stage(ctx: _Context, index: int, stage: Stage, key: str) -> StageOutcome:
    d = ctx.run_dir / "stages" / f"{index:02d}-{stage.kind}-{key}"
    done = (d / STAGE_FILE).exists()
    if done and stage.kind not in ctx.rerun:
        outcome = _load_outcome(ctx, stage, key, d)
        log.info("stage %s: cached (%s)", stage.kind, d.name)
    else:
        start = time.perf_counter()
        with atomic_dir(d, overwrite=True) as tmp:
            artifacts, summary = _EXECUTORS.get(stage.kind, _exec_stage)(ctx, stage, tmp, key)
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
    arts = [load_model(d / a["path"]) for a in meta["artifacts"] if a["path"]]
    return StageOutcome(kind=stage.kind, key=key, directory=d, cached=True, seconds=float(meta["seconds"]),
                        artifacts=arts, summary=meta.get("summary", {}))


def _advance(ctx: _Context, outcome: StageOutcome) -> None:
    """A PyTorch result is the model flowing on; a file result the compressed artifact; exports are listed."""
    if outcome.kind == "export":
        ctx.exports = list(outcome.artifacts)
    elif outcome.kind in _EXECUTORS or not outcome.artifacts:
        return
    elif outcome.artifacts[0].format is Format.TORCH:
        ctx.current = outcome.artifacts[0]
    else:
        ctx.quantized = outcome.artifacts[0]


# --------------------------------------------------------------------------- stage executors
def _accuracy(artifact: Artifact, data: DataSplits, split: str = "val") -> float:
    from edgetl.evaluate import evaluate

    return float(evaluate(artifact, data, split=split)["accuracy"])


def _exec_stage(ctx: _Context, stage: Stage, out: Path, key: str):
    """Any registered stage on the model flowing through the run: ``stage(current, config, data, ctx)``.

    The user's model is the teacher of every stage that learns from one (distillation, pruning's distillation
    recovery); resumable state lives in ``RUN_DIR/work/KEY`` until the stage is done. A PyTorch result is saved
    as ``model.pt``; a file result must be written into the stage directory (``ctx.out_dir``).
    """
    work = ctx.run_dir / "work" / key
    sctx = StageContext(out_dir=out, work_dir=work, teachers=(ctx.source,))
    cfg = build_config(stage, seed=ctx.recipe.seed)
    if stage.kind == "quantize":
        from edgetl.gates import budget_for

        # the default budget drives the fallback (layers kept in float); the gate, not an exception, judges it
        cfg = dataclasses.replace(cfg, max_drop=budget_for("quantize", cfg.max_drop), allow_drop=True)
    art = stage_kind(stage.kind).function()(ctx.current, cfg, data=ctx.data, ctx=sctx)
    if art.format is Format.TORCH and art.model is not None:
        art = dataclasses.replace(art, path=save_model(art, out / "model.pt"))
    elif art.path is None or not Path(art.path).resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"stage {stage.kind!r} returned {art.name}, which is not in its stage directory {out}; "
                          "a stage that writes files writes them under ctx.out_dir")
    shutil.rmtree(work, ignore_errors=True)
    return [art], _json_safe(art.history[-1].metrics)


def quantize_into(artifact: Artifact, config, data: DataSplits, directory: Path) -> Artifact:
    """Quantize into ``directory/model.PRECISION.SUFFIX`` (the file name the backend's format wants)."""
    from edgetl.quantize import quantize

    return quantize(artifact, config, data=data, ctx=StageContext(out_dir=directory))


def _exec_export(ctx: _Context, stage: Stage, out: Path, key: str):
    """Export the PyTorch model; formats that take the quantized artifact (e.g. TensorRT from a QDQ ONNX) get it."""
    from exporters.base import export, format_spec

    cfg = build_config(stage, seed=ctx.recipe.seed)
    q = ctx.quantized
    from_q = [n for n in cfg.formats if q is not None and q.format in format_spec(n).accepts]
    from_fp = [n for n in cfg.formats if n not in from_q]
    arts: list[Artifact] = []
    if from_fp:
        arts += export(ctx.current, from_fp, out / "exports", options=cfg.options, data=ctx.data)
    if from_q:
        arts += export(q, from_q, out / "exports-from-quantized", options=cfg.options, data=ctx.data)
    return arts, {"exports": [{"format": a.format.value, "path": a.path.name,
                               "source": "fp32" if i < len(from_fp) else "quantized",
                               "parity": a.history[-1].metrics.get("parity")} for i, a in enumerate(arts)]}


def _exec_bench(ctx: _Context, stage: Stage, out: Path, key: str):
    """Measure every artifact of the run (and the baselines) on each device, with its test accuracy."""
    from benchmarks.interleave import Candidate, measure_interleaved
    from benchmarks.profiles import load_profile
    from benchmarks.stage import BenchRecord
    from edgetl.progress import track

    cfg = build_config(stage, seed=ctx.recipe.seed)
    candidates = _bench_candidates(ctx, out)
    quality = {role: _quality(art, ctx) for role, art in track(candidates, "accuracy of each artifact")}
    records = []
    for dev in cfg.devices:
        profile = load_profile(dev)
        # interleaved rounds (A B C A B C ...), the teacher first: every speed-up comes from the same rounds
        run = measure_interleaved([Candidate(a, label=role) for role, a in candidates], cfg.bench, profile=profile)
        for (role, _art), r in zip(candidates, run.results, strict=True):
            r = dataclasses.replace(r, accuracy=quality[role]["accuracy"],
                                    accuracy_source=f"{ctx.data.name} test split")
            records.append(BenchRecord(role=role, device=dev, result=r, agreement=quality[role]["agreement"],
                                       cost=quality[role]["cost"]))
    results = [rec.to_dict() for rec in records]
    write_json(out / "results.json", results)
    return [], {"results": results}


def _quality(art: Artifact, ctx: _Context) -> dict[str, Any]:
    """Test accuracy, top-1 agreement with the source model, and params/FLOPs where the model is PyTorch."""
    from edgetl.evaluate import predict

    images, labels = ctx.data.test.images, ctx.data.test.labels.numpy()
    if ctx.reference_pred is None:
        ctx.reference_pred = predict(ctx.source, images).argmax(1)
    pred = predict(art, images).argmax(1)
    cost = None
    if art.format is Format.TORCH and art.model is not None:
        from edgetl.prune.flops import model_cost

        c = model_cost(art.model, art.input_spec.shape)
        cost = {"params": c.params, "flops": c.flops}
    return {"accuracy": float((pred == labels).mean()), "agreement": float((pred == ctx.reference_pred).mean()),
            "cost": cost, "samples": int(len(labels))}


def _bench_candidates(ctx: _Context, out: Path) -> list[tuple[str, Artifact]]:
    cands: list[tuple[str, Artifact]] = [("teacher", ctx.source)]
    if ctx.current is not ctx.source:
        cands.append(("compressed", ctx.current))
    if ctx.quantized is not None:
        cands.append(("quantized", ctx.quantized))
    from edgetl.formats import FORMAT_INFO

    # A TensorRT bundle becomes an engine only on its device: it is measured there (edgetl bench --host).
    cands += [(f"export:{a.format.value}", a) for a in ctx.exports if FORMAT_INFO[a.format].runtime]
    if "teacher-int8" in ctx.recipe.baselines:
        cands.append(("baseline:teacher-int8", _teacher_int8(ctx, out)))
    if ctx.recipe.stage("export") is not None:
        # the teacher's own fp32 export: the deployable baseline a recommendation is measured against
        from exporters.base import export

        onnx = export(ctx.source, ["onnx"], out / "baseline-teacher-fp32", data=ctx.data)[0]
        cands.append(("baseline:teacher-fp32", onnx))
    return cands


def _teacher_int8(ctx: _Context, out: Path) -> Artifact:
    """Plain NNCF int8 of the unpruned model: the baseline a user would get without edgetl's other stages."""
    from edgetl.quantize import QuantizeConfig

    cfg = QuantizeConfig(backend="openvino", precision="int8")
    return quantize_into(ctx.source, cfg, ctx.data, out / "baseline-teacher-int8")


def _store_results(outcomes: list[StageOutcome], run_dir: Path) -> None:
    """The run's measurements go to the results store too, so ``edgetl report`` shows them."""
    from benchmarks.store import record_run

    results = [i["result"] for o in outcomes if o.kind == "bench" for i in o.summary.get("results", [])]
    if results:
        record_run(results, run_id=f"run:{run_dir.resolve().name}")


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


# Stages whose pipeline step is more than running the stage on the current model; every other registered stage
# (prune, distill, quantize, and any added by a row in edgetl.stages) runs through _exec_stage.
_EXECUTORS = {"export": _exec_export, "bench": _exec_bench}


# --------------------------------------------------------------------------- budgets
def _search_budget(ctx: _Context) -> tuple[float | None, bool, list[dict[str, Any]]]:
    """Try pruning ratios from the most aggressive down; the first whose compressed model meets the budgets wins.

    Each candidate runs prune (with its recovery), distill and quantize as the recipe says, and is cached like
    any stage, so a rerun of the search costs nothing.
    """
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile

    b = ctx.recipe.budgets
    ref = _accuracy(ctx.source, ctx.data)
    tried: list[dict[str, Any]] = []
    last_compress = stage_kind("quantize" if ctx.recipe.stage("quantize") is not None else "distill").rank
    for ratio in b.ratios:
        _run_chain(ctx, ratio=ratio, until=last_compress)
        final = ctx.quantized or ctx.current
        acc = _accuracy(final, ctx.data)
        row: dict[str, Any] = {"ratio": ratio, "val_accuracy": acc, "drop_points": 100 * (ref - acc)}
        ok = b.max_accuracy_drop is None or row["drop_points"] <= b.max_accuracy_drop
        if b.target_latency_ms is not None:
            r = measure(final, BenchConfig(threads=2, min_time_s=1.0, min_count=50), profile=load_profile(b.device))
            row["p90_ms"] = r.latency_ms.p90
            ok = ok and r.latency_ms.p90 <= b.target_latency_ms
        row["meets_budget"] = ok
        tried.append(row)
        if ok:
            return ratio, True, tried
    best = max(tried, key=lambda t: t["val_accuracy"])
    return best["ratio"], False, tried


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """A stage's metrics as stage.json holds them: numbers and arrays as numbers, paths and the rest as text."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
            return obj.tolist()
        return str(obj)

    return json.loads(json.dumps(d, default=plain))


