"""Evaluate any model through its :class:`~edgetl.contract.ModelContract`: every input by name, every output
compared, the task's headline metric.

Two measurements, no guessing:

- **label-free fidelity** against a second model (``reference``, e.g. the source of an export) on the same real
  inputs, per output (:func:`edgetl.fidelity.compare`), with the task's headline metric
  (:func:`edgetl.fidelity.headline`) and an optional user metric;
- **accuracy** of a classifier against labels matched *by name* (:func:`edgetl.inputs.map_labels`: a data label the
  model does not have is an error).

Example::

    art = load_model("seg.onnx")
    contract = contract_for(art, parse_flags(task="segmentation"))
    data = load_inputs("tiles.npz", contract=contract)
    r = evaluate_contract(art, contract, data, reference=load_model("seg_fp32.onnx"))
    r.headline.metric, r.headline.value       # ("miou", 0.998)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.artifact import Artifact, Format
from edgetl.contract import ContractFlags, ModelContract, Role, Task, format_shape
from edgetl.errors import ConfigError
from edgetl.fidelity import FidelityResult, Headline, compare, headline
from edgetl.inputs import InputSet

__all__ = ["ContractEvaluation", "contract_for", "describe_contract", "evaluate_contract", "run_samples"]


@dataclass(frozen=True)
class ContractEvaluation:
    """What :func:`evaluate_contract` measured. ``headline`` is the one number a report shows (None when only
    accuracy was measured); ``accuracy`` is None without labels; ``output_shapes`` are the first sample's."""

    task: str
    samples: int
    output_shapes: dict[str, list[int]]
    headline: Headline | None = None
    fidelity: FidelityResult | None = None
    accuracy: float | None = None
    label_map: dict[str, Any] | None = None
    reference_outputs: str | None = None  # "by name" or "by position" (how reference outputs were matched)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "samples": self.samples, "output_shapes": self.output_shapes,
                "headline": self.headline.to_dict() if self.headline else None,
                "fidelity": self.fidelity.to_dict() if self.fidelity else None, "accuracy": self.accuracy,
                "label_map": self.label_map, "reference_outputs": self.reference_outputs, "notes": list(self.notes)}


def contract_for(artifact: Artifact, flags: ContractFlags, *, data: Mapping[str, Any] | None = None,
                 what: str = "MODEL") -> ModelContract:
    """The artifact's contract completed by ``flags`` and checked against the file: a contradiction (unknown input
    name, wrong rank, a size or dtype the file fixes) is one ConfigError line, before any work."""
    from edgetl.contract import merge
    from edgetl.contract_read import resolve_contract

    if artifact.format is Format.TORCH and artifact.model is not None:
        return resolve_contract(artifact.model, flags, base=artifact.contract, data=data)
    if artifact.contract is None:
        raise ConfigError(f"{what} {artifact.name}: edgetl cannot read the inputs of a {artifact.format.value} file; "
                          "evaluate the .onnx or OpenVINO .xml it came from (or give a model that carries them)")
    return merge(artifact.contract, flags)


def run_samples(runtime: Any, contract: ModelContract, samples: Sequence[Mapping[str, np.ndarray]]
                ) -> list[dict[str, np.ndarray]]:
    """One ``run_named`` per sample (batch 1: inputs such as a recurrent state batch on other axes). The first
    run goes through :func:`~edgetl.contract_shapes.check_runs`, so data that contradicts the contract, or a
    shape the model rejects, is one line naming the flags before the rest runs."""
    from edgetl.contract_shapes import check_runs

    first = check_runs(contract, runtime.run_named, inputs=samples[0])
    return [first] + [runtime.run_named(dict(s)) for s in samples[1:]]


def _align(reference: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> tuple[list[dict], str]:
    """The reference's outputs under the candidate's names: by name where they agree, else by position (a
    PyTorch module names its tuple outputs output0.., an ONNX file by its graph)."""
    got = tuple(reference[0])
    if set(names) <= set(got):
        return reference, "by name"
    if len(got) != len(names):
        raise ConfigError(f"--reference gives {len(got)} outputs ({', '.join(got)}) but the model gives "
                          f"{len(names)} ({', '.join(names)}); compare models with the same outputs")
    return [dict(zip(names, r.values(), strict=True)) for r in reference], "by position"


def _accuracy(contract: ModelContract, outputs: list[dict[str, np.ndarray]], labels: np.ndarray) -> float:
    logits = contract.with_role(Role.LOGITS)
    if not logits:
        raise ConfigError("accuracy needs an output with role logits; give it with --role NAME:logits "
                          "(or --output NAME with --task classification)")
    o = logits[0]
    axis = o.axis("C", -1)
    preds = np.concatenate([np.asarray(r[o.name]).argmax(axis=axis).reshape(-1) for r in outputs])
    if len(preds) != len(labels):
        raise ConfigError(f"output {o.name!r} gave {len(preds)} predictions for {len(labels)} labelled samples; "
                          f"give its axis layout with --role {o.name}:logits:N,C")
    return float((preds == np.asarray(labels)).mean())


def evaluate_contract(artifact: Artifact, contract: ModelContract, data: InputSet, *,
                      reference: Artifact | None = None, reference_contract: ModelContract | None = None,
                      metric: str | None = None, runtime: str | None = None, threads: int | None = None
                      ) -> ContractEvaluation:
    """Run ``artifact`` on every sample of ``data``; fidelity against ``reference`` (run on the same samples),
    accuracy against ``data``'s labels for a classifier whose labels are known. Needs one of the two."""
    from edgetl.runtimes import open_runtime

    task = contract.task
    labelled = data.labels is not None and task == Task.CLASSIFICATION and bool(artifact.labels)
    if reference is None and not labelled:
        if metric is not None:
            raise ConfigError("--metric compares the model with a source model; give it with --reference SOURCE")
        need = "labelled data whose label names match the model's, or " if task == Task.CLASSIFICATION else ""
        raise ConfigError(f"task {task.value} is scored label-free against a source model: give {need}"
                          "--reference SOURCE (the model this one was made from)")
    with open_runtime(artifact, runtime=runtime, threads=threads) as rt:
        outputs = run_samples(rt, contract, data.samples)
    notes: list[str] = []
    accuracy = None
    if data.labels is not None and task == Task.CLASSIFICATION:
        if artifact.labels:
            accuracy = _accuracy(contract, outputs, data.labels)
        else:
            notes.append("no accuracy: the model carries no label names to match the data's against")
    fid = head = matched = None
    if reference is not None:
        ref_contract = reference_contract or contract
        with open_runtime(reference) as rt:
            ref_out = run_samples(rt, ref_contract, data.samples)
        ref_out, matched = _align(ref_out, tuple(outputs[0]))
        fid = compare(ref_out, outputs, contract=contract, metric=metric)
        metric_name = next(iter(fid.user)) if metric is not None and len(fid.user) == 1 else None
        head = headline(fid, task, metric=metric_name)
    shapes = {k: list(np.asarray(v).shape) for k, v in outputs[0].items()}
    return ContractEvaluation(task=task.value, samples=len(data.samples), output_shapes=shapes, headline=head,
                              fidelity=fid, accuracy=accuracy,
                              label_map=data.label_map.to_dict() if data.label_map else None,
                              reference_outputs=matched, notes=tuple(notes))


def describe_contract(contract: ModelContract) -> dict[str, Any]:
    """Inputs and outputs in one line each, for a report: ``{"inputs": {"image": "1x3xHxW float32"}, ...}``."""
    return {"inputs": {t.name: f"{format_shape(t.shape)} {t.dtype or '?'}" for t in contract.inputs},
            "outputs": {o.name: f"{format_shape(o.shape)} {o.role.value}" for o in contract.outputs},
            "task": contract.task.value, "metric_outputs": [o.name for o in contract.metric_outputs()]}

