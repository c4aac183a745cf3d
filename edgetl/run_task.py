"""``edgetl run`` for any model: the recipe's contract, its inputs split train/val/test, and the one metric every
score of the run is in.

A classifier with labels is scored as it always was (top-1 against the labels, :class:`edgetl.data.DataSplits`).
Any other model (a task other than classification, contract keys in the recipe, a model that is no one-input
labelled classifier) is scored label-free against the SOURCE model on held-out inputs, by the task's headline
(:func:`edgetl.fidelity.headline`: mIoU for segmentation, box F1 for detection, greedy-decode agreement for
sequences, top-1 agreement for classification, cosine for embeddings); the source scores 100 % against itself.
:class:`TaskSplits` holds the inputs (read by :func:`edgetl.inputs.load_inputs` against the contract), the source
and its outputs per split, so ``splits.score(artifact, "val")`` is one number in 0..1 like an accuracy.

Example::

    flags = recipe_flags(recipe)              # task/inputs/outputs/roles keys (or the run's --task/--input/...)
    splits = load_task_splits(recipe.data, source, flags, seed=0)
    splits.score(quantized, "val")            # 0.993: mIoU of the int8 model against the source's argmax
    splits.metric.to_dict()                   # {"name": "miou", "label": "mIoU vs source %", ...}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import Artifact
from edgetl.contract import ContractFlags, ModelContract, Task
from edgetl.errors import ConfigError, DataError
from edgetl.inputs import InputSet

__all__ = ["FRACTIONS", "LABELS_METRIC", "RunMetric", "TaskSplits", "load_task_splits", "metric_of", "stage_data",
           "task_path", "with_contract"]

FRACTIONS = (0.6, 0.2, 0.2)  # train (prune scoring, distillation, calibration) / val (gates) / test (report)
MIN_SAMPLES = 10
_LABELS = {"top1_agreement": "top-1 agreement vs source %", "miou": "mIoU vs source %",
           "decode_agreement": "decode agreement vs source %", "box_f1": "box F1 vs source %",
           "cosine": "cosine vs source %"}


@dataclass(frozen=True)
class RunMetric:
    """What every score of a run is: ``name`` (``accuracy`` or a :class:`~edgetl.fidelity.Headline` metric), the
    table heading, the split the report's rows come from, and what it is measured against (``labels`` or
    ``source``); ``output`` is the headline output where there are several."""

    name: str
    label: str
    split: str = "test"
    reference: str = "labels"
    output: str | None = None

    def phrase(self) -> str:
        """The metric as a sentence says it: ``top-1`` or ``mIoU vs source``."""
        return "top-1" if self.name == "accuracy" else self.label.removesuffix(" %")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LABELS_METRIC = RunMetric("accuracy", "top-1 %")


def metric_of(data: Any) -> RunMetric:
    """The metric a run's data scores by: a :class:`TaskSplits`' own, else top-1 against labels."""
    return data.metric if isinstance(data, TaskSplits) else LABELS_METRIC


def task_path(flags: ContractFlags, source: Artifact) -> bool:
    """Whether a run scores by fidelity: a task other than classification, any contract key, or a model that is
    not a one-input, one-output classifier with labels and an input spec."""
    if flags.task is not None and flags.task != Task.CLASSIFICATION:
        return True
    if flags.inputs or flags.outputs or flags.roles or flags.opt_shapes:
        return True
    c = source.contract
    plain = source.input_spec is not None and bool(source.labels) and (
        c is None or (len(c.inputs) == 1 and len(c.outputs) <= 1))
    return not plain


def stage_data(data: Any, kind: str) -> Any:
    """What a stage gets as ``data=``: labelled splits as they are; of a run's inputs, the train split (prune
    scoring and its held-out check, distillation, quantization's calibration and its check) or, for export
    parity, the val split."""
    if not isinstance(data, TaskSplits):
        return data
    return data.val if kind == "export" else data.train


def with_contract(art: Artifact, contract: ModelContract) -> Artifact:
    """``art`` carrying the run's contract (a stage output reloaded from disk, an export whose file names the
    outputs by position) where its own has the same inputs; else as it is."""
    own = art.contract
    if own is None or own.input_names == contract.input_names:
        art.contract = contract if own is None or own.output_names == contract.output_names else own
    return art


def resolve_contract(source: Artifact, flags: ContractFlags, data: str) -> ModelContract:
    """The source's contract completed by the recipe's keys; what the file and flags leave open (a symbolic
    H x W) is read from the first sample of ``data``. A contradiction is one ConfigError line."""
    from edgetl.contract import InputTensor, merge
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for
    from edgetl.inputs import load_inputs

    try:
        contract = contract_for(source, flags)
    except ConfigError as first_error:
        base = source.contract or ModelContract(inputs=(InputTensor(name="image"),), fixed=False)
        declared = merge(base, dataclasses.replace(flags, outputs=(), roles=()))
        try:
            sample = load_inputs(data, contract=declared, limit=1).samples[0]
        except ConfigError:
            raise first_error from None
        contract = contract_for(source, flags, data=sample)
    require(contract, shapes=True)
    return contract


def _traced_at_data(contract: ModelContract, sample: dict[str, np.ndarray]) -> ModelContract:
    """A dynamic input (``Nx1xHxW``) without ``--opt-shape`` is traced, calibrated and timed at the size of the
    run's own data (its first sample), which the report records; an opt shape given wins."""
    inputs = tuple(t if t.is_static or t.opt_shape is not None or t.name not in sample
                   else dataclasses.replace(t, opt_shape=tuple(int(d) for d in np.shape(sample[t.name])))
                   for t in contract.inputs)
    return dataclasses.replace(contract, inputs=inputs)


def _headline_metric(contract: ModelContract) -> str:
    task = contract.task
    names = {Task.CLASSIFICATION: "top1_agreement", Task.SEGMENTATION: "miou", Task.SEQUENCE: "decode_agreement",
             Task.DETECTION: "box_f1", Task.EMBEDDING: "cosine"}
    if task not in names:
        raise ConfigError(f"task {task.value}: edgetl run judges its stages by an agreement metric in points, and a "
                          "generic task has only SNR; give the task (--task segmentation|detection|sequence|embedding"
                          "|classification) or the outputs' roles (--role NAME:ROLE)")
    return names[task]


@dataclass
class TaskSplits:
    """A run's inputs, split train/val/test (deterministic by seed), and the source they are scored against."""

    name: str
    contract: ModelContract
    source: Artifact
    train: InputSet
    val: InputSet
    test: InputSet
    seed: int
    metric: RunMetric
    _reference: dict[str, list] = field(default_factory=dict, repr=False)
    last: dict[str, Any] = field(default_factory=dict, repr=False)  # the last score's full fidelity, by split

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def split(self, name: str) -> InputSet:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split {name!r}: the run's splits are train, val, test")
        return getattr(self, name)

    def describe(self) -> dict[str, Any]:
        from edgetl.evaluate_contract import describe_contract

        return {"origin": self.name, "seed": self.seed, "sizes": self.sizes, "fractions": list(FRACTIONS),
                "contract": describe_contract(self.contract), "metric": self.metric.to_dict()}

    def outputs(self, art: Artifact, split: str) -> list[dict[str, np.ndarray]]:
        from edgetl.evaluate_contract import run_samples
        from edgetl.runtimes import open_runtime

        contract = art.contract or self.contract
        with open_runtime(art) as rt:
            return run_samples(rt, contract, self.split(split).samples)

    def fidelity(self, art: Artifact, split: str = "val") -> dict[str, Any]:
        """Fidelity of ``art`` against the source on ``split``: the headline (value in 0..1) and every output's
        cosine / SNR / max error."""
        from edgetl.evaluate_contract import _align
        from edgetl.fidelity import compare, headline

        if split not in self._reference:
            self._reference[split] = self.outputs(self.source, split)
        ref = self._reference[split]
        out = self.outputs(art, split)
        out, _ = _align(out, tuple(ref[0]))
        res = compare(ref, out, contract=self.contract)
        head = headline(res, self.contract.task)
        return {"headline": head.to_dict(), "samples": res.samples,
                "outputs": {o.output: {"cosine": _finite(o.cosine), "snr_db": _finite(o.snr_db),
                                       "max_abs": _finite(o.max_abs)} for o in res.outputs}}

    def score(self, art: Artifact, split: str = "val") -> float | None:
        """The headline of ``art`` against the source on ``split``, in 0..1 (None: nothing to agree on, e.g. no
        box above the threshold in either model)."""
        f = self.fidelity(art, split)
        self.last[split] = f
        v = f["headline"]["value"]
        return None if v is None else float(v)


def _finite(v: float | None) -> float | str | None:
    """JSON has no inf: an identical output's SNR is written "inf", never dropped."""
    return v if v is None or np.isfinite(v) else str(v)


def _split(inputs: InputSet, seed: int) -> tuple[InputSet, InputSet, InputSet]:
    n = len(inputs)
    if n < MIN_SAMPLES:
        raise DataError(f"--data {inputs.origin}: {n} samples; a run splits them train/val/test "
                        f"({'/'.join(f'{f:g}' for f in FRACTIONS)}), so it needs at least {MIN_SAMPLES}")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = max(1, round(n * FRACTIONS[1])), max(1, round(n * FRACTIONS[2]))
    parts = (order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test])

    def subset(idx: np.ndarray) -> InputSet:
        idx = sorted(int(i) for i in idx)
        labels = None if inputs.labels is None else inputs.labels[idx]
        return InputSet(samples=tuple(inputs.samples[i] for i in idx), origin=inputs.origin, labels=labels,
                        label_map=inputs.label_map)

    return subset(parts[0]), subset(parts[1]), subset(parts[2])


def load_task_splits(data: str, source: Artifact, flags: ContractFlags, *, seed: int) -> TaskSplits:
    """The run's inputs read against the source's contract (completed by ``flags``), split by ``seed``."""
    from edgetl.inputs import load_inputs

    contract = resolve_contract(source, flags, data)
    metric = RunMetric(_headline_metric(contract), "", reference="source")
    inputs = load_inputs(data, contract=contract)
    contract = _traced_at_data(contract, inputs.samples[0])
    source.contract = contract
    train, val, test = _split(inputs, seed)
    splits = TaskSplits(name=Path(str(data)).name, contract=contract, source=source, train=train, val=val,
                        test=test, seed=seed, metric=dataclasses.replace(metric, label=_LABELS[metric.name]))
    head = splits.fidelity(source, "val")["headline"]  # the source against itself: runs it once, names the output
    splits.metric = dataclasses.replace(splits.metric, output=head["output"])
    return splits
