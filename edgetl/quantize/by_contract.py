"""Quantize any model by its contract: calibration from unlabeled real inputs, the check by label-free fidelity.

A model that is not a labelled single-input classifier (several inputs, several outputs, a dynamic H x W, no
labels) is quantized from an :class:`~edgetl.inputs.InputSet` (an image folder without classes, an ``.npz`` named
after the inputs, or ``module:function``): its first samples calibrate, its last fifth checks (disjoint where
there are at least two samples). Every candidate runs on the check samples beside the fp32 model in the same
runtime, and :func:`edgetl.fidelity.compare` measures EVERY output (cosine, SNR, max errors, and the task's own
agreement: top-1, mIoU, decode agreement, box F1). The budget is ``max_drop`` in points of the task's agreement
metric (1.0 = one prediction in a hundred may change) or ``min_snr`` dB on every output; missing it keeps the most
sensitive layers in float, as for classifiers (:func:`edgetl.quantize.quantizer._search`). The record names the
metric it judged.

Example::

    art = with_contract(load_model("det.onnx"), parse_flags(task="detection", roles=["boxes:boxes:N,A,4:xyxy"]))
    q = quantize(art, QuantizeConfig(backend="openvino", max_drop=2.0), data=load_inputs("det.npz",
                 contract=art.contract), ctx=StageContext(output=Path("det.int8.xml")))
    q.history[-1].metrics["headline"]          # {"metric": "box_f1", "value": 0.98, "output": "boxes"}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, StageRecord
from edgetl.contract import ModelContract, Task
from edgetl.errors import BudgetError, ConfigError
from edgetl.progress import task as progress_task
from edgetl.quantize.calibration import LOW_COUNT
from edgetl.quantize.config import QuantizeConfig

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.inputs import InputSet
    from edgetl.stages import StageContext

__all__ = ["CONTRACT_BACKENDS", "FidelityScorer", "quantize_by_contract", "split_inputs"]

log = logging.getLogger(__name__)

CONTRACT_BACKENDS = ("openvino", "pytorch", "onnxruntime", "tensorrt")  # calibrate from feeds of any inputs


def split_inputs(inputs: InputSet, config: QuantizeConfig) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(calibration feeds, check feeds, record): the last fifth (``eval_samples`` if set) checks, the first
    ``calib_samples`` of the rest calibrate. One sample only: both are that sample, and the record says so."""
    samples = [dict(s) for s in inputs.samples]
    n = len(samples)
    warnings: list[str] = []
    if n < 2:
        calib, check, disjoint = samples, samples, False
        warnings.append(f"only {n} sample in {inputs.origin}: the fidelity check runs on the calibration sample "
                        "itself, which flatters int8; give more data")
    else:
        n_check = min(int(config.eval_samples or max(1, n // 5)), n - 1)
        calib, check, disjoint = samples[: min(config.calib_samples, n - n_check)], samples[n - n_check :], True
    if len(calib) < LOW_COUNT:
        warnings.append(f"only {len(calib)} calibration samples (fewer than {LOW_COUNT}): int8 activation ranges may "
                        "not represent real inputs; check the fidelity report, or give more data")
    for w in warnings:
        log.warning(w)
    record = {"dataset": inputs.origin, "count": len(calib), "requested": int(config.calib_samples),
              "check_samples": len(check), "disjoint": disjoint, "calibration_indices": [0, len(calib)],
              "check_indices": [n - len(check), n], "inputs": inputs.describe()["inputs"]}
    return calib, check, {"record": record, "warnings": warnings}


def _agreement_task(contract: ModelContract) -> bool:
    return contract.task not in (Task.GENERIC,)


class FidelityScorer:
    """Scores candidates by label-free fidelity against the fp32 model on the check feeds (every output)."""

    def __init__(self, backend, contract: ModelContract, check: list[dict], config: QuantizeConfig) -> None:
        self.backend, self.contract, self.check, self.config = backend, contract, check, config
        self.reference = backend.run_outputs(backend.reference, check, contract)
        self.baseline = None  # the fp32 model is the reference itself: fidelity 1, SNR infinite

    def measure(self, path: Path, model: Any) -> tuple[float, float, dict[str, Any]]:
        from edgetl.fidelity import check_budget, compare, headline

        cand = self.backend.run_outputs(path, self.check, self.contract)
        result = compare(self.reference, cand, contract=self.contract)
        head = headline(result, self.contract.task)
        cfg = self.config
        within, why = True, None
        try:
            check_budget(result, self.contract.task, max_drop=None if cfg.max_drop is None else cfg.max_drop / 100.0,
                         min_snr=cfg.min_snr)
        except BudgetError as e:
            within, why = False, str(e)
        score = -math.inf if head.value is None else float(head.value)
        return score, score, {"headline": head.to_dict(), "within_budget": within, "missed_because": why,
                              **result.to_dict()}

    def within(self, a) -> bool:
        return bool(a.fidelity["within_budget"])


def _check_request(contract: ModelContract, config: QuantizeConfig) -> None:
    if str(config.backend.value) not in CONTRACT_BACKENDS:
        raise ConfigError(f"backend {config.backend.value} quantizes single-input image classifiers only; for a model "
                          f"by its contract (several inputs or outputs, any task) use --backend "
                          f"{' or '.join(CONTRACT_BACKENDS)}")
    if config.max_drop is not None and not _agreement_task(contract):
        raise ConfigError(f"--max-drop is a drop of the task's agreement metric; task {contract.task.value} has none "
                          "(its headline is the lowest SNR): give --min-snr DB, or --task with its output roles")


def _fp32_contract(fp32_art: Artifact, contract: ModelContract) -> ModelContract:
    """The contract the fidelity compares by: the fp32 file's output names, the user's roles, task and selection."""
    got = fp32_art.contract or contract
    if got.output_names == contract.output_names:
        outs = contract.outputs
    else:
        outs = tuple(dataclasses.replace(o, role=s.role, layout=s.layout, box_format=s.box_format)
                     for o, s in zip(got.outputs, contract.outputs, strict=False)) + got.outputs[len(contract.outputs):]
    keep = tuple(s for s in contract.selected if s in {o.name for o in outs})
    return dataclasses.replace(got, outputs=outs, task=contract.task, selected=keep)


def quantize_by_contract(artifact: Artifact, config: QuantizeConfig, *, inputs: InputSet,
                         ctx: StageContext | None = None) -> Artifact:
    """Quantize ``artifact`` (its contract completed) on ``inputs``; see the module docstring."""
    from edgetl.quantize.backends import backend_class, default_suffix
    from edgetl.quantize.quantizer import _search, _size
    from edgetl.stages import StageContext

    ctx = ctx or StageContext()
    contract = artifact.contract
    if contract is None:
        raise ConfigError("quantizing a model by its contract needs the contract: give --input NAME:SHAPE")
    _check_request(contract, config)
    kind = backend_class(config.backend)
    kind.check_source(artifact)
    source = dataclasses.replace(artifact, input_spec=None)  # exported and run by its contract, not an image spec
    calib, check, split = split_inputs(inputs, config)
    start = time.perf_counter()
    name = f"model.{config.precision.value}{default_suffix(config)}"
    out_path = ctx.file(name) or Path(tempfile.mkdtemp(prefix="edgetl-quantize-")) / name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out_path.parent) as scratch, ctx.reporting():
        work = Path(scratch)
        with progress_task(f"quantize {config.backend.value} {config.precision.value} by contract", None) as bar:
            fp32_art = kind.fp32_by_contract(source, config, work, calib[0])
            bar.advance(1, step="fp32 model ready")
            backend = kind(config, source, fp32_art, work, calib)
            scorer = FidelityScorer(backend, _fp32_contract(fp32_art, contract), check, config)
            chosen, attempts, _, ranking, unsupported = _search(
                backend, config, scorer, lambda: calib[: config.sensitivity_samples], bar)
        metrics = _metrics(config, scorer.contract, split, chosen, attempts, ranking, unsupported, backend.note())
        metrics["fp32_size_bytes"] = _size(fp32_art)
        if not metrics["budget_met"] and metrics["budget_met"] is not None and not config.allow_drop:
            raise _budget_error(config, chosen)
        record = StageRecord(stage="quantize", options={**config.to_dict(), "calibration_count": len(calib),
                                                        "calibration_dataset": inputs.origin, "by_contract": True},
                             metrics=metrics, seconds=time.perf_counter() - start)
        result = backend.deliver(chosen, record, out_path)
    last = result.history[-1]
    sized = dataclasses.replace(last, metrics={**last.metrics, "size_bytes": _size(result)})
    return dataclasses.replace(result, history=[*result.history[:-1], sized])


def _metrics(config, contract, split, chosen, attempts, ranking, unsupported, note) -> dict[str, Any]:
    budgeted = config.max_drop is not None or config.min_snr is not None
    warnings = list(split["warnings"])
    if not budgeted:
        warnings.append(f"no fidelity budget was checked: task {contract.task.value} has no agreement metric; give "
                        "--min-snr DB (every output) to gate it")
    fid = chosen.fidelity
    return {
        "precision": config.precision.value, "backend": config.backend.value, "by_contract": True,
        "task": contract.task.value, "metric": fid["headline"]["metric"], "headline": fid["headline"],
        "fidelity": {k: v for k, v in fid.items() if k not in ("headline", "within_budget", "missed_because")},
        "max_drop": config.max_drop, "min_snr": config.min_snr,
        "budget_met": fid["within_budget"] if budgeted else None, "missed_because": fid["missed_because"],
        "kept_float": [{k: d[k] for k in ("node", "op", "layer")} for d in chosen.kept_float],
        "unquantizable": unsupported, "attempts": [a.summary(0.0) for a in attempts],
        "sensitivity": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in ranking[: max(config.max_float_layers, 10)]],
        "calibration": split["record"], "warnings": warnings, "backend_info": chosen.info,
        "contract": contract.to_dict(), **({"note": note} if note else {}),
    }


def _budget_error(config: QuantizeConfig, best) -> BudgetError:
    head = best.fidelity["headline"]
    kept = ", ".join(k["layer"] for k in best.kept_float) or "none"
    err = BudgetError(
        f"int8 fidelity budget not met: {config.backend.value} reached {head['metric']} {head['value']:.4f} on "
        f"{head['output']!r} ({best.fidelity['missed_because']}); best reached keeps {len(best.kept_float)} layer(s) "
        f"in float ({kept}). Relax --max-drop/--min-snr, allow more float layers, give more calibration data, or pass "
        "--allow-drop to write the best model anyway")
    err.metrics = {"headline": head, "kept_float": [k["layer"] for k in best.kept_float]}  # type: ignore[attr-defined]
    return err
