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
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import BudgetError, ConfigError
from edgetl.progress import task
from edgetl.quantize.calibration import CalibrationSet, select_calibration
from edgetl.quantize.config import Backend, CalibrationMethod, OrtMode, QuantizeConfig, QuantPrecision

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.data import DataSplits
    from edgetl.stages import StageContext

__all__ = ["Attempt", "default_suffix", "quantize"]

log = logging.getLogger(__name__)

_SOURCES = {
    Backend.ONNXRUNTIME: (Format.TORCH, Format.ONNX),
    Backend.TENSORRT: (Format.TORCH, Format.ONNX),
    Backend.OPENVINO: (Format.TORCH, Format.ONNX, Format.OPENVINO),
    Backend.PYTORCH: (Format.TORCH,),
}


def default_suffix(config: QuantizeConfig) -> str:
    """The output file suffix of a backend ('' for a TensorRT fp16 bundle directory)."""
    if config.backend is Backend.OPENVINO:
        return ".xml"
    if config.backend is Backend.PYTORCH:
        return ".pte"
    if config.backend is Backend.TENSORRT and config.precision is QuantPrecision.FP16:
        return ""
    return ".onnx"


# What calibration "auto" tries, in order of preference on a tie (see CalibrationMethod for measurements).
AUTO_CALIBRATIONS = ("percentile", "mean-minmax")


@dataclass
class Attempt:
    """One quantized candidate and how it scored."""

    kept_float: list[dict[str, str]]
    accuracy: float
    agreement: float
    path: Path
    model: Any = None  # in-memory ov.Model for OpenVINO, the converted graph module for PT2E
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self, fp32_accuracy: float) -> dict[str, Any]:
        return {"kept_float": [k["layer"] for k in self.kept_float], "accuracy": self.accuracy,
                "drop_points": _points(fp32_accuracy - self.accuracy), "agreement": self.agreement,
                **({"calibration": self.info["calibration"]} if self.info.get("calibration") else {})}


def _points(x: float) -> float:
    return round(100.0 * x, 4)


# --------------------------------------------------------------------------- backends
class _OnnxBackend:
    """ONNX Runtime static / dynamic int8 or fp16 from a float ONNX."""

    def __init__(self, fp32: Path, work: Path, config: QuantizeConfig, calib: np.ndarray) -> None:
        from edgetl.quantize import onnxruntime as qo

        self.qo, self.config, self.work, self.calib = qo, config, work, calib
        self.pre = work / "fp32.pre.onnx"
        self.pre_info = qo.preprocess(fp32, self.pre)
        self.reference = self.pre
        self.types = qo.choose_ort_types(forced=config.ort_types.value)
        self.method = config.calibration.value
        self.n = 0

    def calibrations(self) -> list[str | None]:
        """The range estimators to try for the first candidate (None: this build calibrates nothing)."""
        cfg = self.config
        if cfg.precision is QuantPrecision.FP16 or cfg.mode is OrtMode.DYNAMIC:
            return [None]
        return list(AUTO_CALIBRATIONS) if cfg.calibration is CalibrationMethod.AUTO else [cfg.calibration.value]

    def layers(self) -> list[dict[str, str]]:
        return self.qo.compute_nodes(self.pre)

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any]]:
        self.n += 1
        out = self.work / f"candidate{self.n}.onnx"
        cfg = self.config
        if cfg.precision is QuantPrecision.FP16:
            return out, self.qo.convert_fp16(self.pre, out)
        if cfg.mode is OrtMode.DYNAMIC:
            info = self.qo.quantize_dynamic_onnx(self.pre, out, per_channel=cfg.per_channel, exclude=exclude)
        else:
            cache = self.work / f"calibration-{self.method}.json"  # ranges kept per estimator between candidates
            calib = None if cache.exists() else self.calib
            info = self.qo.quantize_static_onnx(self.pre, out, calib, types=self.types, per_channel=cfg.per_channel,
                                                exclude=exclude, calibration=self.method, cache=cache)
            info["type_choice"] = self.types.to_dict()
        return out, {**self.pre_info, **info}

    def unquantized(self, path: Path) -> list[dict[str, str]]:
        return self.qo.unquantized_nodes(self.pre, path)

    def ranking(self, path: Path, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.qo.layer_errors(self.pre, path, batch, self.layers())


class _TensorRtBackend(_OnnxBackend):
    """TensorRT-ready symmetric Q/DQ ONNX (checked here in ONNX Runtime); fp16 is a builder flag."""

    def __init__(self, fp32: Path, work: Path, config: QuantizeConfig, calib: np.ndarray) -> None:
        from edgetl.quantize import onnxruntime as qo

        self.qo, self.config, self.work, self.calib = qo, config, work, calib
        self.pre = self.reference = fp32  # no ORT-specific optimisation: TensorRT parses this graph
        self.pre_info = {}
        self.method = config.calibration.value
        self.n = 0

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any]]:
        from edgetl.quantize.tensorrt import make_qdq

        if self.config.precision is QuantPrecision.FP16:
            return self.pre, {"format": "fp32 ONNX; fp16 is the TensorRT builder flag --fp16"}
        self.n += 1
        out = self.work / f"candidate{self.n}.onnx"
        return out, make_qdq(self.pre, out, self.calib, exclude=exclude, calibration=self.method)

    def unquantized(self, path: Path) -> list[dict[str, str]]:
        if path == self.pre:
            return []
        return self.qo.unquantized_nodes(self.pre, path)


class _OpenVinoBackend:
    """NNCF int8 or fp16 weight compression on an OpenVINO model."""

    def __init__(self, fp32_xml: Path, work: Path, config: QuantizeConfig, calib: np.ndarray) -> None:
        import openvino as ov

        from edgetl.quantize import openvino as qv

        self.qv, self.config, self.work, self.calib = qv, config, work, calib
        self.reference = fp32_xml
        self.fp32_model = ov.Core().read_model(str(fp32_xml))
        self.n = 0

    def calibrations(self) -> list[str | None]:
        return [None]  # NNCF estimates ranges itself (its preset decides how)

    def layers(self) -> list[dict[str, str]]:
        return self.qv.compute_ops(self.fp32_model)

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any], Any]:
        import openvino as ov

        self.n += 1
        out = self.work / f"candidate{self.n}.xml"
        if self.config.precision is QuantPrecision.FP16:
            ov.save_model(self.fp32_model, str(out), compress_to_fp16=True)
            return out, {"format": "IR", "weights": "fp16 (compress_to_fp16)"}, self.fp32_model
        q, info = self.qv.quantize_ov(self.fp32_model.clone(), self.calib, preset=self.config.preset.value,
                                      target_device=self.config.target_device, ignored=exclude)
        ov.save_model(q, str(out), compress_to_fp16=False)
        return out, info, q

    def unquantized(self, model) -> list[dict[str, str]]:
        if self.config.precision is QuantPrecision.FP16:
            return []
        return self.qv.unquantized_ops(model, self.layers())

    def ranking(self, model, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.qv.layer_errors(self.fp32_model, model, batch, self.layers())


class _Pt2eBackend:
    """PT2E static int8 (XNNPACKQuantizer) on the PyTorch model, lowered to an XNNPACK ``.pte``.

    Checked against the fp32 ``.pte`` from the same lowering, both run by the ExecuTorch runtime.
    """

    def __init__(self, source: Artifact, fp32_pte: Path, work: Path, config: QuantizeConfig,
                 calib: np.ndarray) -> None:
        from edgetl.quantize import pt2e

        self.pt2e, self.source, self.config, self.work, self.calib = pt2e, source, config, work, calib
        self.reference = fp32_pte
        self._layers: list[dict[str, str]] | None = None
        self.n = 0

    def calibrations(self) -> list[str | None]:
        return [None]  # the XNNPACK config's HistogramObserver estimates activation ranges itself

    def layers(self) -> list[dict[str, str]]:
        if self._layers is None:
            self._layers = self.pt2e.quantizable_layers(self.source.model, self.source)
        return self._layers

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any], Any]:
        self.n += 1
        out = self.work / f"candidate{self.n}.pte"
        converted, info = self.pt2e.quantize_module(self.source.model, self.calib, artifact=self.source,
                                                    exclude=exclude, per_channel=self.config.per_channel)
        lowered = self.pt2e.write_pte(converted, self.source, out)
        return out, {**lowered, **info}, converted

    def unquantized(self, converted) -> list[dict[str, str]]:
        return self.pt2e.unquantized_layers(converted, self.layers())

    def ranking(self, converted, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.pt2e.layer_errors(self.source.model, converted, batch, self.layers(), artifact=self.source)


# --------------------------------------------------------------------------- the stage
def quantize(artifact: Artifact, config: QuantizeConfig, *, data: DataSplits | None = None,
             ctx: StageContext | None = None) -> Artifact:
    """Quantize ``artifact`` for ``config.backend``; returns the accuracy-checked artifact.

    It is written to ``ctx.output``, else to ``ctx.out_dir / model.PRECISION.SUFFIX``, else into a fresh
    temporary directory. The returned artifact's last record is the ``quantize`` stage: options, calibration
    set, accuracy before/after, agreement, sizes, layers kept in float and why.
    """
    from edgetl.data import check_classes
    from edgetl.stages import StageContext

    ctx = ctx or StageContext()
    if data is None:
        raise ConfigError("quantization calibrates and checks accuracy on data: pass data= (e.g. load_data(...))")

    if not isinstance(config, QuantizeConfig):
        raise ConfigError(f"quantize takes a QuantizeConfig, got {type(config).__name__}")
    if artifact.format not in _SOURCES[config.backend]:
        hint = ("the PyTorch checkpoint (.pt): PT2E quantizes the PyTorch graph" if config.backend is Backend.PYTORCH
                else "the PyTorch checkpoint (or its fp32 ONNX)")
        raise ConfigError(f"backend {config.backend.value} quantizes a "
                          f"{' or '.join(f.value for f in _SOURCES[config.backend])} model, not a "
                          f"{artifact.format.value} one; give {hint}")
    if config.backend is Backend.PYTORCH and artifact.model is None:
        raise ConfigError("backend pytorch needs the PyTorch model in memory; load the checkpoint with load_model")
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
            fp32_art = _fp32_for_backend(artifact, config, work)
            bar.advance(1, step="fp32 model ready")
            batch = calib.batch(artifact.input_spec)
            backend = _make_backend(config, artifact, fp32_art, work, batch)
            chosen, attempts, fp32_acc, ranking, unsupported = _search(backend, config, fp32_art, data, calib, bar)
        metrics = _metrics(config, calib, fp32_acc, chosen, attempts, ranking, unsupported)
        metrics["fp32_size_bytes"] = _size(fp32_art)
        drop = fp32_acc - chosen.accuracy
        within = config.max_drop is None or _points(drop) <= config.max_drop + 1e-9
        metrics["budget_met"] = within if config.max_drop is not None else None
        if not within and not config.allow_drop:
            raise _budget_error(config, fp32_acc, chosen)
        record = StageRecord(stage="quantize", options=_options(config, calib), metrics=metrics,
                             seconds=time.perf_counter() - start)
        result = _deliver(artifact, fp32_art, config, chosen, record, out_path)
    # the size of what was delivered, in a new record: the one handed to _deliver is not changed after the fact
    last = result.history[-1]
    sized = replace(last, metrics={**last.metrics, "size_bytes": _size(result)})
    return replace(result, history=[*result.history[:-1], sized])


def _is_quantized(artifact: Artifact) -> bool:
    if artifact.format is Format.ONNX:
        from exporters.onnx import is_qdq

        return is_qdq(artifact.path)
    return any(r.stage == "quantize" for r in artifact.history)


def _fp32_for_backend(artifact: Artifact, config: QuantizeConfig, work: Path) -> Artifact:
    """The fp32 model in the backend's format (exported by the exporters when needed)."""
    if config.backend is Backend.OPENVINO:
        if artifact.format is Format.OPENVINO:
            return artifact
        from exporters.openvino import export_openvino

        return export_openvino(artifact, work / "fp32.xml")
    if config.backend is Backend.PYTORCH:
        from exporters.executorch import export_executorch

        return export_executorch(artifact, work / "fp32.pte")  # the fp32 reference, lowered like the int8 model
    if artifact.format is Format.ONNX:
        return artifact
    from exporters.onnx import export_onnx

    return export_onnx(artifact, work / "fp32.onnx")


def _make_backend(config: QuantizeConfig, source: Artifact, fp32_art: Artifact, work: Path, batch: np.ndarray):
    if config.backend is Backend.PYTORCH:
        return _Pt2eBackend(source, fp32_art.path, work, config, batch)
    if config.backend is Backend.OPENVINO:
        return _OpenVinoBackend(fp32_art.path, work, config, batch)
    if config.backend is Backend.TENSORRT:
        return _TensorRtBackend(fp32_art.path, work, config, batch)
    return _OnnxBackend(fp32_art.path, work, config, batch)


def _build(backend, exclude: list[str]) -> tuple[Path, dict[str, Any], Any]:
    res = backend.build(exclude)
    return res if len(res) == 3 else (*res, None)


def _logits(artifact_like: Artifact, path: Path, images) -> np.ndarray:
    from edgetl.evaluate import predict

    fmt = {".xml": Format.OPENVINO, ".pte": Format.EXECUTORCH}.get(path.suffix, Format.ONNX)
    art = replace(artifact_like, format=fmt, path=path, model=None)
    return predict(art, images, threads=2)


def _search(backend, config: QuantizeConfig, fp32_art: Artifact, data: DataSplits, calib: CalibrationSet, bar):
    split = data.split(config.eval_split)
    n = len(split) if config.eval_samples is None else min(config.eval_samples, len(split))
    if n == 0:
        from edgetl.errors import DataError

        raise DataError(f"the {config.eval_split} split of {data.name!r} is empty: the accuracy check needs it")
    images, labels = split.images[:n], np.asarray(split.labels[:n])
    ref = _logits(fp32_art, backend.reference, images)
    ref_top = ref.argmax(1)
    fp32_acc = float((ref_top == labels).mean())
    layers = {d["node"]: d for d in backend.layers()}
    user_keep = []
    for name in config.keep_float:
        hit = layers.get(name) or next((d for d in layers.values() if d["layer"] == name), None)
        if hit is None:
            from edgetl.errors import UnknownNameError

            raise UnknownNameError("layer to keep in float", name, [d["layer"] for d in layers.values()])
        user_keep.append(hit)

    def attempt(keep: list[dict[str, str]]) -> Attempt:
        path, info, model = _build(backend, [k["node"] for k in keep])
        logits = _logits(fp32_art, path, images)
        top = logits.argmax(1)
        a = Attempt(kept_float=keep, accuracy=float((top == labels).mean()),
                    agreement=float((top == ref_top).mean()), path=path, model=model, info=info)
        bar.advance(1, kept=len(keep), acc=round(100 * a.accuracy, 2))
        return a

    # Calibration "auto": one candidate per range estimator, the most accurate (then most agreeing) kept; the
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
    budget = config.max_drop
    over = budget is not None and _points(fp32_acc - first.accuracy) > budget + 1e-9
    if over and config.precision is QuantPrecision.INT8 and config.max_float_layers > 0:
        sens = calib.batch(fp32_art.input_spec, limit=config.sensitivity_samples)
        ranked = backend.ranking(first.model if first.model is not None else first.path, sens)
        skip = {k["node"] for k in user_keep} | {u["node"] for u in unsupported}
        ranking = [r for r in ranked if r["node"] not in skip]
        keep = list(user_keep)
        for r in ranking[: config.max_float_layers]:
            keep = [*keep, {k: r[k] for k in ("node", "op", "layer")}]
            a = attempt(keep)
            attempts.append(a)
            if a.accuracy > best.accuracy + 1e-12:
                best = a
            if _points(fp32_acc - a.accuracy) <= budget + 1e-9:
                best = a
                break
    return best, attempts, fp32_acc, ranking, unsupported


def _metrics(config, calib, fp32_acc, chosen: Attempt, attempts, ranking, unsupported) -> dict[str, Any]:
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
        **({"note": "fp16 is applied by the TensorRT builder on the device; the accuracy here is the fp32 ONNX "
                    "the engine is built from"}
           if config.backend is Backend.TENSORRT and config.precision is QuantPrecision.FP16 else {}),
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


def _deliver(source: Artifact, fp32_art: Artifact, config: QuantizeConfig, chosen: Attempt, record: StageRecord,
             out: Path) -> Artifact:
    """Move the accepted candidate to ``out`` (atomically) with its metadata; return the final artifact."""
    from edgetl.fileio import atomic_path
    from exporters.base import write_metadata

    extra = {"precision": config.precision.value, "quantized_for": config.backend.value}
    if config.backend is Backend.OPENVINO:
        from exporters.openvino import export_openvino

        base = replace(source, format=Format.OPENVINO, path=fp32_art.path, model=None) \
            if source.format is Format.TORCH else source
        ir = export_openvino(base, out, ov_model=chosen.model, compress_to_fp16=config.precision is QuantPrecision.FP16)
        result = base.with_stage(record, path=out, format=Format.OPENVINO, extra={**ir.extra, **extra})
        write_metadata(result)
        return result
    base = fp32_art if source.format is Format.TORCH else source
    if config.backend is Backend.PYTORCH:
        with atomic_path(out) as tmp:
            shutil.copyfile(chosen.path, tmp)
        info = chosen.info
        result = base.with_stage(record, path=out, format=Format.EXECUTORCH, extra={
            **extra, "executorch_non_delegated_ops": info.get("non_delegated_ops", {}),
            "executorch_delegated_ops": info.get("delegated_ops", {})})
        write_metadata(result)
        return result
    if config.backend is Backend.TENSORRT and out.suffix != ".onnx":
        import os

        from exporters.tensorrt import export_tensorrt

        staged = base.with_stage(record, path=chosen.path, format=Format.ONNX, extra=extra)
        precision = "fp16" if config.precision is QuantPrecision.FP16 else None
        scratch = chosen.path.parent / "bundle" / out.name
        scratch.parent.mkdir()
        bundle = export_tensorrt(staged, scratch, precision=precision)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(scratch, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, out)
        moved = out / bundle.path.relative_to(scratch) if bundle.path != scratch else out
        return replace(bundle, path=moved)
    with atomic_path(out) as tmp:
        shutil.copyfile(chosen.path, tmp)
    result = base.with_stage(record, path=out, format=Format.ONNX, extra=extra)
    write_metadata(result)
    return result


def _size(art: Artifact) -> int | None:
    from benchmarks.harness import model_size

    return model_size(art)
