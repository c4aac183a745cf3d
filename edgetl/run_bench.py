"""The pipeline's bench stage: every artifact of a run and its baselines, measured in interleaved rounds.

The candidates are the teacher (PyTorch eager), the compressed PyTorch model, the quantized artifact, every
export a runtime here can load, and the baselines: the teacher's plain int8 (``baselines: [teacher-int8]``) and
the teacher's own fp32 ONNX (whenever the recipe exports), the deployable baseline a recommendation is measured
against. The baselines are built once per run directory (``RUN/baselines/``) and copied into the stage, so
re-measuring times the same bytes. Each carries its test accuracy and top-1 agreement with the teacher.

Example::

    arts, summary = exec_bench(ctx, stage, stage_dir, key)     # summary["results"]: one BenchRecord per row
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, Format
from edgetl.fileio import atomic_dir, final_path, write_json
from edgetl.recipe import Stage, build_config

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.pipeline import StageOutcome, _Context

__all__ = ["attach_clean_records", "baseline", "bench_candidates", "exec_bench", "quality", "store_results"]


def exec_bench(ctx: _Context, stage: Stage, out: Path, key: str):
    """Measure every artifact of the run (and the baselines) on each device, with its test accuracy."""
    from benchmarks.interleave import Candidate, measure_interleaved
    from benchmarks.profiles import load_profile
    from benchmarks.stage import BenchRecord
    from edgetl.progress import track

    cfg = build_config(stage, seed=ctx.recipe.seed)
    store = _store()  # opened before any work: an unusable results store is refused, not found out at the end
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
    results = attach_clean_records([rec.to_dict() for rec in records], store)
    for rec, d in zip(records, results, strict=True):
        if scores[rec.role].get("fidelity") is not None:  # scored against the source: per output, headline named
            d["fidelity"] = scores[rec.role]["fidelity"]
    write_json(out / "results.json", results)
    return [], {"results": results}


def _store():
    from benchmarks.store import ResultsStore

    return ResultsStore()  # the store store_results() writes to ($EDGETL_RESULTS_DB, else the user's cache)


def attach_clean_records(items: list[dict[str, Any]], store) -> list[dict[str, Any]]:
    """Each bench item's result gains ``clean_records``: the store's earlier uncontended measurements of the same
    bytes on the same device and host (:meth:`benchmarks.store.ResultsStore.clean_records`), looked up now,
    before this run's own results are stored. When this run's timings are contended, the recommendation ranks
    by them (:mod:`benchmarks.ranking`); report.json keeps them, so a report renders the same later."""
    from benchmarks.harness import BenchResult

    for item in items:
        item["result"]["clean_records"] = store.clean_records(BenchResult.from_dict(item["result"]))
    return items


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
        cands.append(("baseline:teacher-fp32", _teacher_fp32(ctx, out)))
    return cands


def _teacher_int8(ctx: _Context, out: Path) -> Artifact:
    """Plain NNCF int8 of the unpruned model: the baseline a user would get without edgetl's other stages."""
    from edgetl.quantize import QuantizeConfig
    from edgetl.run_stages import quantize_into

    cfg = QuantizeConfig(backend="openvino", precision="int8")
    from edgetl.run_task import stage_data

    return baseline(ctx, "teacher-int8", lambda d: quantize_into(ctx.source, cfg, stage_data(ctx.data, "quantize"), d),
                    out)


def _teacher_fp32(ctx: _Context, out: Path) -> Artifact:
    """The teacher's own fp32 ONNX: the deployable baseline a recommendation is measured against."""
    from edgetl.run_task import stage_data
    from exporters.base import export

    return baseline(ctx, "teacher-fp32",
                    lambda d: export(ctx.source, ["onnx"], d, data=stage_data(ctx.data, "export"))[0], out)


def baseline(ctx: _Context, name: str, build: Callable[[Path], Artifact], out: Path) -> Artifact:
    """A baseline built once per teacher, data and seed (``RUN/baselines/NAME-KEY``) and copied into the bench
    stage's ``baseline-NAME``, where it is measured: a re-measured bench stage (deleted, or rerun with ``--from
    bench``) times the same bytes again, so the results store can match them (sha256) to an earlier clean
    measurement. Rebuilt, an OpenVINO IR or ONNX differs in its bytes (generated node names, the build time in
    edgetl's metadata) though it is the same model. ``build(directory)`` writes the artifact inside
    ``directory`` (which it creates); a failed build leaves nothing."""
    import shutil

    from edgetl.models import load_model
    from edgetl.pipeline import _hash, _root_key

    built = Path(ctx.run_dir) / "baselines" / f"{name}-{_hash(_root_key(ctx.recipe), 'baseline', name)}"
    done = built / "baseline.json"
    if not done.is_file():
        with atomic_dir(built, overwrite=True) as tmp:
            art = build(tmp / "files")  # a directory that does not exist yet, as exporters want
            write_json(tmp / "baseline.json", {"name": name, "file": str(Path(art.path).resolve().relative_to(
                (tmp / "files").resolve()))})
    here = out / f"baseline-{name}"
    shutil.copytree(built / "files", here)
    return load_model(here / json.loads(done.read_text())["file"])


def store_results(outcomes: list[StageOutcome], run_dir: Path) -> None:
    """The run's measurements go to the results store too, so ``edgetl report`` shows them."""
    from benchmarks.store import record_run

    results = [i["result"] for o in outcomes if o.kind == "bench" for i in o.summary.get("results", [])]
    if results:
        record_run(results, run_id=f"run:{run_dir.resolve().name}")
