"""The pipeline's bench stage: every artifact of a run and its baselines, measured in interleaved rounds.

The candidates are the teacher (PyTorch eager), the compressed PyTorch model, the quantized artifact, every
export a runtime here can load, and the baselines: the teacher's plain int8 (``baselines: [teacher-int8]``) and
the teacher's own fp32 ONNX (whenever the recipe exports), the deployable baseline a recommendation is measured
against. Each carries its test accuracy and top-1 agreement with the teacher.

Example::

    arts, summary = exec_bench(ctx, stage, stage_dir, key)     # summary["results"]: one BenchRecord per row
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, Format
from edgetl.fileio import final_path, write_json
from edgetl.recipe import Stage, build_config

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.pipeline import StageOutcome, _Context

__all__ = ["bench_candidates", "exec_bench", "quality", "store_results"]


def exec_bench(ctx: _Context, stage: Stage, out: Path, key: str):
    """Measure every artifact of the run (and the baselines) on each device, with its test accuracy."""
    from benchmarks.interleave import Candidate, measure_interleaved
    from benchmarks.profiles import load_profile
    from benchmarks.stage import BenchRecord
    from edgetl.progress import track

    cfg = build_config(stage, seed=ctx.recipe.seed)
    candidates = [(role, bench_ready(a, ctx)) for role, a in bench_candidates(ctx, out)]
    scores = {role: quality(art, ctx) for role, art in track(candidates, "accuracy of each artifact")}
    records = []
    for dev in cfg.devices:
        profile = load_profile(dev)
        # interleaved rounds (A B C A B C ...), the teacher first: every speed-up comes from the same rounds
        run = measure_interleaved([Candidate(a, label=role) for role, a in candidates], cfg.bench, profile=profile)
        for (role, _art), r in zip(candidates, run.results, strict=True):
            r = dataclasses.replace(r, accuracy=scores[role]["accuracy"], path=_final(r.path, out),
                                    accuracy_source=_split_name(ctx))
            records.append(BenchRecord(role=role, device=dev, result=r, agreement=scores[role]["agreement"],
                                       cost=scores[role]["cost"]))
    results = [rec.to_dict() for rec in records]
    for rec, d in zip(records, results, strict=True):
        if scores[rec.role].get("fidelity") is not None:  # scored against the source: per output, headline named
            d["fidelity"] = scores[rec.role]["fidelity"]
    write_json(out / "results.json", results)
    return [], {"results": results}


def _split_name(ctx: _Context) -> str:
    from edgetl.run_task import metric_of

    m = metric_of(ctx.data)
    return f"{ctx.data.name} test split" + ("" if m.reference == "labels" else f", {m.phrase()}")


def _final(path: str | None, out: Path) -> str | None:
    """Where a file made by this stage (a baseline) lies once the stage directory is renamed into place: the
    results (results.json, the results store) name the file a user can open, not the temporary one."""
    if not path or not Path(path).resolve().is_relative_to(out.resolve()):
        return path
    return str(final_path(out) / Path(path).resolve().relative_to(out.resolve()))


def bench_ready(art: Artifact, ctx: _Context) -> Artifact:
    """An artifact of a run scored through its contract, fed by the contract from the run's data when timed
    (:mod:`benchmarks.contract_inputs`); a classifier's as it is."""
    from edgetl.run_task import TaskSplits, with_contract

    if not isinstance(ctx.data, TaskSplits):
        return art
    art = with_contract(dataclasses.replace(art, extra=dict(art.extra)), ctx.data.contract)
    art.input_spec = None  # fed by its contract, whatever spec a checkpoint or sidecar records
    art.extra["bench_data"] = ctx.data.test.origin
    return art


def _task_quality(art: Artifact, ctx: _Context) -> dict[str, Any]:
    """The task's headline against the source on the test split, every output's cosine / SNR, and params/FLOPs
    where the model is PyTorch."""
    from edgetl.prune.feeds import as_example
    from edgetl.run_task import TaskSplits

    data: TaskSplits = ctx.data  # type: ignore[assignment]
    score = data.score(art, "test")
    cost = None
    if art.format is Format.TORCH and art.model is not None:
        from edgetl.prune.flops import model_cost

        c = model_cost(art.model, example=as_example(data.test.samples[0], data.contract))
        cost = {"params": c.params, "flops": c.flops}
    f = data.last["test"]
    return {"accuracy": score, "agreement": None, "cost": cost, "samples": len(data.test),
            "fidelity": {"metric": data.metric.name, "headline": f["headline"], "outputs": f["outputs"],
                         "samples": f["samples"]}}


def quality(art: Artifact, ctx: _Context) -> dict[str, Any]:
    """Test accuracy, top-1 agreement with the source model, and params/FLOPs where the model is PyTorch (a model
    scored through its contract: the task's fidelity against the source, :func:`_task_quality`)."""
    from edgetl.evaluate import predict
    from edgetl.run_task import TaskSplits

    if isinstance(ctx.data, TaskSplits):
        return _task_quality(art, ctx)

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


def bench_candidates(ctx: _Context, out: Path) -> list[tuple[str, Artifact]]:
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
        from edgetl.run_task import stage_data
        from exporters.base import export

        onnx = export(ctx.source, ["onnx"], out / "baseline-teacher-fp32", data=stage_data(ctx.data, "export"))[0]
        cands.append(("baseline:teacher-fp32", onnx))
    return cands


def _teacher_int8(ctx: _Context, out: Path) -> Artifact:
    """Plain NNCF int8 of the unpruned model: the baseline a user would get without edgetl's other stages."""
    from edgetl.quantize import QuantizeConfig
    from edgetl.run_stages import quantize_into

    cfg = QuantizeConfig(backend="openvino", precision="int8")
    from edgetl.run_task import stage_data

    return quantize_into(ctx.source, cfg, stage_data(ctx.data, "quantize"), out / "baseline-teacher-int8")


def store_results(outcomes: list[StageOutcome], run_dir: Path) -> None:
    """The run's measurements go to the results store too, so ``edgetl report`` shows them."""
    from benchmarks.store import record_run

    results = [i["result"] for o in outcomes if o.kind == "bench" for i in o.summary.get("results", [])]
    if results:
        record_run(results, run_id=f"run:{run_dir.resolve().name}")
