"""The pipeline's stage executors: how ``edgetl run`` runs each stage kind on the model flowing through a run.

Every registered stage (prune, distill, quantize, and any added by a row in :mod:`edgetl.stages`) runs through
:func:`exec_stage` on the current model; :data:`EXECUTORS` names the stages whose step is more than that
(export takes the fp32 model and, for formats built from one, the quantized artifact; bench measures every
artifact of the run with the baselines, :mod:`edgetl.run_bench`).

Example::

    arts, summary = EXECUTORS.get(stage.kind, exec_stage)(ctx, stage, stage_dir, key)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, Format
from edgetl.data import DataSplits
from edgetl.errors import ConfigError
from edgetl.models import save_model
from edgetl.recipe import Stage, build_config
from edgetl.run_bench import exec_bench
from edgetl.run_task import TaskSplits, stage_data
from edgetl.stages import StageContext, stage_kind

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.pipeline import _Context

__all__ = ["EXECUTORS", "accuracy", "exec_export", "exec_stage", "json_safe", "quantize_into"]


def accuracy(artifact: Artifact, data: DataSplits | TaskSplits, split: str = "val") -> float | None:
    """The run's score of ``artifact`` on ``split``, in 0..1: top-1 against the labels, or (a model scored through
    its contract) the task's headline against the source model (None: nothing to agree on)."""
    if isinstance(data, TaskSplits):
        return data.score(artifact, split)
    from edgetl.evaluate import evaluate

    return float(evaluate(artifact, data, split=split)["accuracy"])


def exec_stage(ctx: _Context, stage: Stage, out: Path, key: str):
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

        # the stage's max_drop, else the recipe's quantize budget, else the default drives the fallback (layers
        # kept in float); the gate, not an exception, judges the result
        budget = budget_for("quantize", cfg.max_drop, budgets=ctx.recipe.budgets.stages)
        cfg = dataclasses.replace(cfg, max_drop=budget, allow_drop=True)
    latency = None
    if stage.kind == "prune" and stage.latency is not None:
        from edgetl.run_latency import recipe_target

        # widths chosen against the latency table measured here, then measured and tightened until T holds
        art, latency = recipe_target(stage.latency, splits=ctx.data).prune(ctx.current, cfg, ctx.data)
    else:
        art = stage_kind(stage.kind).function()(ctx.current, cfg, data=stage_data(ctx.data, stage.kind), ctx=sctx)
    if art.format is Format.TORCH and art.model is not None:
        art = dataclasses.replace(art, path=save_model(art, out / "model.pt"))
    elif art.path is None or not Path(art.path).resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"stage {stage.kind!r} returned {art.name}, which is not in its stage directory {out}; "
                          "a stage that writes files writes them under ctx.out_dir")
    shutil.rmtree(work, ignore_errors=True)
    summary = json_safe(art.history[-1].metrics)
    if latency is not None:
        summary["latency_target"] = json_safe(latency)  # predicted against measured, per iteration
    if stage.kind == "quantize":
        _explain_size(art, summary)
    return [art], summary


def _explain_size(art: Artifact, summary: dict[str, Any]) -> None:
    """An int8 ONNX no smaller than its fp32 source says why, in the stage's record (and so the report): on tiny
    models the Quantize/DequantizeLinear nodes and per-channel scales cost more than int8 weights save."""
    size, fp32 = summary.get("size_bytes"), summary.get("fp32_size_bytes")
    if art.format is not Format.ONNX or not size or not fp32 or size < fp32:
        return
    from edgetl.quantize.onnx_size import explain_size

    note = explain_size(Path(art.path), fp32)
    if note:
        summary["size_note"] = note
        summary["warnings"] = [*summary.get("warnings", []), note]


def quantize_into(artifact: Artifact, config, data: DataSplits, directory: Path) -> Artifact:
    """Quantize into ``directory/model.PRECISION.SUFFIX`` (the file name the backend's format wants)."""
    from edgetl.quantize import quantize

    return quantize(artifact, config, data=data, ctx=StageContext(out_dir=directory))


def exec_export(ctx: _Context, stage: Stage, out: Path, key: str):
    """Export the PyTorch model; formats that take the quantized artifact (e.g. TensorRT from a QDQ ONNX) get it."""
    from exporters.base import export, format_spec

    cfg = build_config(stage, seed=ctx.recipe.seed)
    q = ctx.quantized
    from_q = [n for n in cfg.formats if q is not None and q.format in format_spec(n).accepts]
    from_fp = [n for n in cfg.formats if n not in from_q]
    from edgetl.run_gates import export_accuracies

    arts: list[Artifact] = []
    if from_fp:
        arts += export(ctx.current, from_fp, out / "exports", options=cfg.options, data=stage_data(ctx.data, "export"))
    n_fp = len(arts)
    if from_q:
        arts += export(q, from_q, out / "exports-from-quantized", options=cfg.options,
                       data=stage_data(ctx.data, "export"))
    sources = [ctx.current if i < n_fp else q for i in range(len(arts))]
    gated = export_accuracies(ctx, arts, sources)  # what the export gate judges (edgetl.run_gates)
    return arts, {"exports": [{"format": a.format.value, "path": a.path.name,
                               "source": "fp32" if i < n_fp else "quantized",
                               "parity": a.history[-1].metrics.get("parity"), **g}
                              for i, (a, g) in enumerate(zip(arts, gated, strict=True))]}


# Stages whose pipeline step is more than running the stage on the current model.
EXECUTORS = {"export": exec_export, "bench": exec_bench}


def json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """A stage's metrics as stage.json holds them: numbers and arrays as numbers, paths and the rest as text."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
            return obj.tolist()
        return str(obj)

    return json.loads(json.dumps(d, default=plain))
