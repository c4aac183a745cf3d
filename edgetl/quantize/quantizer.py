"""The quantization stage: ``quantize(artifact, config, *, data, ctx=None) -> Artifact``, accuracy-checked.

1. Calibration images are chosen from the training split (:mod:`edgetl.quantize.calibration`).
2. The fp32 model is brought to the backend's format with the exporters (ONNX for ONNX Runtime and TensorRT,
   OpenVINO IR for OpenVINO, an XNNPACK ``.pte`` for PyTorch/ExecuTorch) and quantized there (:mod:`.onnxruntime`,
   :mod:`.openvino`, :mod:`.tensorrt`; PT2E on the PyTorch model for :mod:`.pt2e`, lowered like the fp32 ``.pte``).
3. Every quantized model is evaluated against that fp32 model on the validation split, in the same runtime:
   top-1 of both, the drop in points, and how often the two agree on the top-1 class.
4. With ``max_drop``, a model losing more keeps its most sensitive layers in floating point: layers are ranked
   once by the error each adds (output noise-to-signal minus input noise-to-signal, on calibration images), then
   kept in float one more at a time, each candidate evaluated on the validation split, until the drop is within
   budget or ``max_float_layers`` is reached. Unreachable: :class:`~edgetl.errors.BudgetError` with the best
   reached, unless ``allow_drop`` (then the best model is written, and the report says the budget was missed).

Nothing is written to the output unless the result is accepted; outputs appear atomically.

Example::

    q = quantize(load_model("teacher.pt"), QuantizeConfig(backend="openvino", max_drop=1.0),
                 data=load_data("mnist5k"), ctx=StageContext(output=Path("teacher_int8.xml")))
    q.history[-1].metrics["drop_points"], q.history[-1].metrics["kept_float"]
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import BudgetError, ConfigError
from edgetl.progress import task
from edgetl.quantize.backends import QuantizerBackend, backend_class, default_suffix
from edgetl.quantize.calibration import CalibrationSet, select_calibration
from edgetl.quantize.config import AUTO_CALIBRATIONS, QuantizeConfig, QuantPrecision

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.data import DataSplits
    from edgetl.inputs import InputSet
    from edgetl.stages import StageContext

__all__ = ["AUTO_CALIBRATIONS", "Attempt", "QuantizerBackend", "default_suffix", "quantize"]

log = logging.getLogger(__name__)

@dataclass
class Attempt:
    """One quantized candidate and how it scored: ``accuracy`` is top-1 against labels for a classifier, the
    headline fidelity metric against the fp32 model (``fidelity`` holds the rest) for a model by its contract."""

    kept_float: list[dict[str, str]]
    accuracy: float
    agreement: float
    path: Path
    model: Any = None  # in-memory ov.Model for OpenVINO, the converted graph module for PT2E
    info: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None

    def summary(self, fp32_accuracy: float) -> dict[str, Any]:
        if self.fidelity is not None:
            return {"kept_float": [k["layer"] for k in self.kept_float], "headline": self.fidelity["headline"],
                    "within_budget": self.fidelity["within_budget"],
                    "snr_db": {o["output"]: o["snr_db"] for o in self.fidelity["outputs"]},
                    **({"calibration": self.info["calibration"]} if self.info.get("calibration") else {})}
        return {"kept_float": [k["layer"] for k in self.kept_float], "accuracy": self.accuracy,
                "drop_points": _points(fp32_accuracy - self.accuracy), "agreement": self.agreement,
                **({"calibration": self.info["calibration"]} if self.info.get("calibration") else {})}


def _points(x: float) -> float:
    return round(100.0 * x, 4)


# --------------------------------------------------------------------------- the stage
def quantize(artifact: Artifact, config: QuantizeConfig, *, data: DataSplits | InputSet | None = None,
             ctx: StageContext | None = None) -> Artifact:
    """Quantize ``artifact`` for ``config.backend``; returns the accuracy-checked artifact.

    ``data`` is a labelled dataset (:func:`edgetl.data.load_data`) for a classifier, or real inputs of any model
    (:func:`edgetl.inputs.load_inputs`, read by its contract): then fidelity on every output is the check
    (:mod:`edgetl.quantize.by_contract`).

    It is written to ``ctx.output``, else to ``ctx.out_dir / model.PRECISION.SUFFIX``, else into a fresh
    temporary directory. The returned artifact's last record is the ``quantize`` stage: options, calibration
    set, accuracy before/after, agreement, sizes, layers kept in float and why.
    """
    from edgetl.data import check_classes
    from edgetl.inputs import InputSet
    from edgetl.stages import StageContext

    if isinstance(data, InputSet):  # any model: unlabeled feeds, label-free fidelity on every output
        from edgetl.quantize.by_contract import quantize_by_contract

        if not isinstance(config, QuantizeConfig):
            raise ConfigError(f"quantize takes a QuantizeConfig, got {type(config).__name__}")
        return quantize_by_contract(artifact, config, inputs=data, ctx=ctx)
    ctx = ctx or StageContext()
    if data is None:
        raise ConfigError("quantization calibrates and checks accuracy on data: pass data= (e.g. load_data(...))")

    if not isinstance(config, QuantizeConfig):
        raise ConfigError(f"quantize takes a QuantizeConfig, got {type(config).__name__}")
    kind = backend_class(config.backend)
    kind.check_source(artifact)
    if artifact.format is not Format.TORCH and artifact.path is not None and _is_quantized(artifact):
        raise ConfigError(f"{artifact.path.name} is already quantized; quantize its fp32 source instead")
    check_classes(artifact.labels, data)
    start = time.perf_counter()
    calib = select_calibration(data, samples=config.calib_samples, seed=config.seed)
    name = f"model.{config.precision.value}{default_suffix(config)}"
    out_path = ctx.file(name) or Path(tempfile.mkdtemp(prefix="edgetl-quantize-")) / name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out_path.parent) as scratch, ctx.reporting():
        work = Path(scratch)
        with task(f"quantize {config.backend.value} {config.precision.value}", None) as bar:
            fp32_art = kind.fp32(artifact, config, work)
            bar.advance(1, step="fp32 model ready")
            batch = calib.batch(artifact.input_spec)
            backend = kind(config, artifact, fp32_art, work, batch)
            scorer = _TopOneScorer(backend, config, fp32_art, data)
            chosen, attempts, fp32_acc, ranking, unsupported = _search(
                backend, config, scorer, lambda: calib.batch(fp32_art.input_spec, limit=config.sensitivity_samples),
                bar)
        metrics = _metrics(config, calib, fp32_acc, chosen, attempts, ranking, unsupported, backend.note())
        metrics["fp32_size_bytes"] = _size(fp32_art)
        drop = fp32_acc - chosen.accuracy
        within = config.max_drop is None or _points(drop) <= config.max_drop + 1e-9
        metrics["budget_met"] = within if config.max_drop is not None else None
        if not within and not config.allow_drop:
            raise _budget_error(config, fp32_acc, chosen)
        record = StageRecord(stage="quantize", options=_options(config, calib), metrics=metrics,
                             seconds=time.perf_counter() - start)
        result = backend.deliver(chosen, record, out_path)
    # the size of what was delivered, in a new record: the one handed to deliver is not changed after the fact
    last = result.history[-1]
    sized = replace(last, metrics={**last.metrics, "size_bytes": _size(result)})
    return replace(result, history=[*result.history[:-1], sized])


def _is_quantized(artifact: Artifact) -> bool:
    if artifact.format is Format.ONNX:
        from edgetl.formats import export_function

        return export_function("onnx", "is_qdq")(artifact.path)
    return any(r.stage == "quantize" for r in artifact.history)


def _build(backend, exclude: list[str]) -> tuple[Path, dict[str, Any], Any]:
    res = backend.build(exclude)
    return res if len(res) == 3 else (*res, None)


def _logits(artifact_like: Artifact, path: Path, images) -> np.ndarray:
    from edgetl.evaluate import predict
    from edgetl.formats import format_for_suffix

    fmt = format_for_suffix(path.suffix) or Format.ONNX
    art = replace(artifact_like, format=fmt, path=path, model=None)
    return predict(art, images, threads=2)


class _TopOneScorer:
    """Top-1 against the labels of ``config.eval_split`` and agreement with the fp32 model, in its runtime."""

    def __init__(self, backend, config: QuantizeConfig, fp32_art: Artifact, data: DataSplits) -> None:
        split = data.split(config.eval_split)
        n = len(split) if config.eval_samples is None else min(config.eval_samples, len(split))
        if n == 0:
            from edgetl.errors import DataError

            raise DataError(f"the {config.eval_split} split of {data.name!r} is empty: the accuracy check needs it")
        self.config, self.fp32_art = config, fp32_art
        self.images, self.labels = split.images[:n], np.asarray(split.labels[:n])
        self.ref_top = _logits(fp32_art, backend.reference, self.images).argmax(1)
        self.baseline = float((self.ref_top == self.labels).mean())

    def measure(self, path: Path, model: Any) -> tuple[float, float, dict[str, Any] | None]:
        top = _logits(self.fp32_art, path, self.images).argmax(1)
        return float((top == self.labels).mean()), float((top == self.ref_top).mean()), None

    def within(self, a: Attempt) -> bool:
        budget = self.config.max_drop
        return budget is None or _points(self.baseline - a.accuracy) <= budget + 1e-9


def _user_keep(backend, config: QuantizeConfig) -> list[dict[str, str]]:
    layers = {d["node"]: d for d in backend.layers()}
    user_keep = []
    for name in config.keep_float:
        hit = layers.get(name) or next((d for d in layers.values() if d["layer"] == name), None)
        if hit is None:
            from edgetl.errors import UnknownNameError

            raise UnknownNameError("layer to keep in float", name, [d["layer"] for d in layers.values()])
        user_keep.append(hit)
    return user_keep


def _search(backend, config: QuantizeConfig, scorer, sensitivity, bar):
    """The candidates: one per range estimator, then (over budget) the most sensitive layers kept in float one
    more at a time. ``scorer`` measures a candidate and says whether it is within budget (top-1 against labels,
    or fidelity by the model's contract); ``sensitivity()`` gives the inputs layers are ranked on."""
    user_keep = _user_keep(backend, config)

    def attempt(keep: list[dict[str, str]]) -> Attempt:
        path, info, model = _build(backend, [k["node"] for k in keep])
        score, agreement, fidelity = scorer.measure(path, model)
        a = Attempt(kept_float=keep, accuracy=score, agreement=agreement, path=path, model=model, info=info,
                    fidelity=fidelity)
        bar.advance(1, kept=len(keep), score=round(score, 4))
        return a

    # Calibration "auto": one candidate per range estimator, the best scoring (then most agreeing) kept; the
    # fallback below re-quantizes with the estimator chosen here.
    tried = []
    for method in backend.calibrations():
        if method is not None:
            backend.method = method
        tried.append(attempt(user_keep))
    first = max(tried, key=lambda a: (a.accuracy, a.agreement))  # first of equals: AUTO_CALIBRATIONS' order
    if first.info.get("calibration") is not None:
        backend.method = first.info["calibration"]
    unsupported = [u for u in backend.unquantized(first.model if first.model is not None else first.path)
                   if u["node"] not in {k["node"] for k in user_keep}]
    for u in unsupported:
        log.warning("%s cannot quantize %s node %s (layer %s): it stays in floating point", config.backend.value,
                    u["op"], u["node"], u["layer"])
    attempts, best, ranking = list(tried), first, []
    if not scorer.within(first) and config.precision is QuantPrecision.INT8 and config.max_float_layers > 0:
        ranked = backend.ranking(first.model if first.model is not None else first.path, sensitivity())
        skip = {k["node"] for k in user_keep} | {u["node"] for u in unsupported}
        ranking = [r for r in ranked if r["node"] not in skip]
        keep = list(user_keep)
        for r in ranking[: config.max_float_layers]:
            keep = [*keep, {k: r[k] for k in ("node", "op", "layer")}]
            a = attempt(keep)
            attempts.append(a)
            if a.accuracy > best.accuracy + 1e-12:
                best = a
            if scorer.within(a):
                best = a
                break
    return best, attempts, scorer.baseline, ranking, unsupported


def _metrics(config, calib, fp32_acc, chosen: Attempt, attempts, ranking, unsupported, note) -> dict[str, Any]:
    return {
        "precision": config.precision.value,
        "backend": config.backend.value,
        "split": config.eval_split,
        "fp32_accuracy": fp32_acc,
        "accuracy": chosen.accuracy,
        "drop_points": _points(fp32_acc - chosen.accuracy),
        "agreement": chosen.agreement,
        "max_drop": config.max_drop,
        "kept_float": [{k: d[k] for k in ("node", "op", "layer")} for d in chosen.kept_float],
        "unquantizable": unsupported,
        "attempts": [a.summary(fp32_acc) for a in attempts],
        "sensitivity": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in ranking[: max(config.max_float_layers, 10)]],
        "calibration": calib.record(),
        "warnings": list(calib.warnings),
        "backend_info": chosen.info,
        **({"note": note} if note else {}),
    }


def _options(config: QuantizeConfig, calib: CalibrationSet) -> dict[str, Any]:
    return {**config.to_dict(), "calibration_count": len(calib), "calibration_dataset": calib.dataset}


def _budget_error(config: QuantizeConfig, fp32_acc: float, best: Attempt) -> BudgetError:
    kept = ", ".join(k["layer"] for k in best.kept_float) or "none"
    err = BudgetError(
        f"int8 accuracy budget not met: {config.backend.value} lost {_points(fp32_acc - best.accuracy):.2f} points "
        f"(fp32 {100 * fp32_acc:.2f} % -> {100 * best.accuracy:.2f} %) with max drop {config.max_drop:g}; best "
        f"reached keeps {len(best.kept_float)} layer(s) in float ({kept}). Raise --max-drop, allow more float "
        "layers, give more calibration data, or pass --allow-drop to write the best model anyway"
    )
    err.metrics = {"fp32_accuracy": fp32_acc, "accuracy": best.accuracy,  # type: ignore[attr-defined]
                   "drop_points": _points(fp32_acc - best.accuracy),
                   "kept_float": [k["layer"] for k in best.kept_float]}
    return err


def _size(art: Artifact) -> int | None:
    from edgetl.formats import artifact_size

    return artifact_size(art)
