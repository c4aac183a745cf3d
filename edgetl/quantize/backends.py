"""Quantization backends, one class per backend, registered by name (plug-ins: ``edgetl.quantizers``).

A backend says what it quantizes (``sources``), what it delivers (``output``, whose file suffix comes from the
format table), brings the fp32 model to its format (:meth:`QuantizerBackend.fp32`, through the exporters named
in the format table), builds candidates (``build(exclude)``), lists what stayed in float, ranks layers by the
error they add, and delivers the accepted candidate (:meth:`QuantizerBackend.deliver`). The search, the
accuracy check and the fallback in :mod:`edgetl.quantize.quantizer` are the same for every backend.

Example (a plug-in)::

    class MyBackend(QuantizerBackend):
        name = "mine"
        sources = (Format.TORCH, Format.ONNX)
        output = Format.ONNX

        def build(self, exclude):
            out = self.work / "candidate.onnx"
            my_quantize(self.reference, out, self.calib)
            return out, {"tool": "mine"}
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.formats import EXPORTS, FORMAT_INFO, export_function, metadata_path, write_metadata
from edgetl.quantize.config import AUTO_CALIBRATIONS, CalibrationMethod, OrtMode, QuantizeConfig, QuantPrecision

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.quantize.quantizer import Attempt

__all__ = ["QUANTIZERS", "QuantizerBackend", "backend_class", "default_suffix"]

QUANTIZERS: dict[str, str] = {
    "onnxruntime": "edgetl.quantize.backends:OnnxBackend",
    "openvino": "edgetl.quantize.backends:OpenVinoBackend",
    "tensorrt": "edgetl.quantize.backends:TensorRtBackend",
    "pytorch": "edgetl.quantize.backends:Pt2eBackend",
}


def backend_class(name: str) -> type[QuantizerBackend]:
    """The backend class registered as ``name`` (built-in or plug-in)."""
    from edgetl.registry import quantizers

    return quantizers().load(str(name))


def default_suffix(config: QuantizeConfig) -> str:
    """The output file suffix of a backend ('' for a bundle directory, e.g. TensorRT fp16)."""
    return backend_class(config.backend).suffix(config)


class QuantizerBackend:
    """Base of the backends: the fp32 reference in ``self.reference``, calibration images in ``self.calib``."""

    name: ClassVar[str] = ""
    sources: ClassVar[tuple[Format, ...]] = (Format.TORCH, Format.ONNX)  # artifact formats it takes
    output: ClassVar[Format] = Format.ONNX  # the format it delivers
    fp32_export: ClassVar[tuple[str, str]] = ("onnx", "export_onnx")  # export target, its fn(artifact, path)

    def __init__(self, config: QuantizeConfig, source: Artifact, fp32_art: Artifact, work: Path,
                 calib: np.ndarray) -> None:
        self.config, self.source, self.fp32_art, self.work, self.calib = config, source, fp32_art, work, calib
        self.reference = fp32_art.path  # what the candidates are checked against, in the same runtime
        self.method = config.calibration.value
        self.n = 0

    @classmethod
    def suffix(cls, config: QuantizeConfig) -> str:
        return FORMAT_INFO[cls.output].suffix

    @classmethod
    def check_source(cls, artifact: Artifact) -> None:
        """Raise :class:`~edgetl.errors.ConfigError` when this backend cannot quantize ``artifact``."""
        from edgetl.errors import ConfigError

        if artifact.format not in cls.sources:
            raise ConfigError(f"backend {cls.name} quantizes a {' or '.join(f.value for f in cls.sources)} model, "
                              f"not a {artifact.format.value} one; give the PyTorch checkpoint (or its fp32 "
                              f"{FORMAT_INFO[cls.output].format.value})")

    @classmethod
    def fp32(cls, artifact: Artifact, config: QuantizeConfig, work: Path) -> Artifact:
        """The fp32 model in this backend's format: a file source as it is, a PyTorch one exported."""
        if artifact.format is not Format.TORCH:
            return artifact
        target, function = cls.fp32_export
        return export_function(target, function)(artifact, work / f"fp32{EXPORTS[target].suffix}")

    @classmethod
    def fp32_by_contract(cls, artifact: Artifact, config: QuantizeConfig, work: Path, feed: dict) -> Artifact:
        """The fp32 model in this backend's format for a model by its contract; ``feed`` is one real sample (the
        example to trace with: a sample rate or token ids cannot be made up)."""
        return cls.fp32(artifact, config, work)

    def run_outputs(self, path: Path, feeds: list[dict], contract) -> list[dict[str, np.ndarray]]:
        """Every output by name for each feed, in this backend's runtime (checks of a model by its contract)."""
        from edgetl.formats import format_for_suffix
        from edgetl.runtimes import open_runtime

        art = Artifact(format=format_for_suffix(Path(path).suffix) or Format.ONNX, input_spec=None, labels=(),
                       path=Path(path), contract=contract)
        with open_runtime(art, threads=2) as rt:
            got = [rt.run_named(dict(f)) for f in feeds]
        names = contract.output_names
        if got and set(got[0]) != set(names) and len(got[0]) == len(names):
            # an OpenVINO port has several names (ONNX's "scores" and "/Reshape_2_output_0") and the runtime
            # shows any one of them: the outputs are in the model's order, which is the contract's
            got = [dict(zip(names, g.values(), strict=True)) for g in got]
        return got

    def calibrations(self) -> list[str | None]:
        """The range estimators to try for the first candidate (None: the backend estimates ranges itself)."""
        return [None]

    def layers(self) -> list[dict[str, str]]:
        """The quantizable layers: ``{"node", "op", "layer"}`` each."""
        return []

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any]] | tuple[Path, dict[str, Any], Any]:
        """Write one candidate keeping ``exclude`` (node names) in float; returns its path, info, [model]."""
        raise NotImplementedError

    def unquantized(self, candidate) -> list[dict[str, str]]:
        return []

    def ranking(self, candidate, batch: np.ndarray) -> list[dict[str, Any]]:
        """Layers by the error each adds (``{"node", "op", "layer", ...}``), worst first; [] if not supported."""
        return []

    def deliver(self, chosen: Attempt, record: StageRecord, out: Path) -> Artifact:
        """Move the accepted candidate to ``out`` (atomically) with its metadata; return the final artifact."""
        from edgetl.fileio import atomic_path

        with atomic_path(out) as tmp:
            shutil.copyfile(chosen.path, tmp)
        base = self.fp32_art if self.source.format is Format.TORCH else self.source
        result = base.with_stage(record, path=out, format=self.output, extra=self.delivered_extra(chosen))
        write_metadata(result)
        return result

    def note(self) -> str | None:
        """A caveat the result's metrics carry (e.g. what the accuracy was measured on), if any."""
        return None

    def delivered_extra(self, chosen: Attempt) -> dict[str, Any]:
        return {"precision": self.config.precision.value, "quantized_for": self.config.backend.value}


class OnnxBackend(QuantizerBackend):
    """ONNX Runtime static / dynamic int8 or fp16 from a float ONNX."""

    name = "onnxruntime"

    def __init__(self, config, source, fp32_art, work, calib) -> None:
        from edgetl.quantize import onnxruntime as qo

        super().__init__(config, source, fp32_art, work, calib)
        self.qo = qo
        self.pre = work / "fp32.pre.onnx"
        self.pre_info = qo.preprocess(fp32_art.path, self.pre)
        self.reference = self.pre
        self.types = qo.choose_ort_types(forced=config.ort_types.value)

    def calibrations(self) -> list[str | None]:
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
            if isinstance(self.calib, np.ndarray):
                quantize_static = self.qo.quantize_static_onnx
            else:  # a model of any inputs: feeds by input name (edgetl.quantize.ort_feeds)
                from edgetl.quantize.ort_feeds import quantize_static_feeds as quantize_static
            info = quantize_static(self.pre, out, calib, types=self.types, per_channel=cfg.per_channel,
                                   exclude=exclude, calibration=self.method, cache=cache)
            info["type_choice"] = self.types.to_dict()
        return out, {**self.pre_info, **info}

    def unquantized(self, path: Path) -> list[dict[str, str]]:
        return self.qo.unquantized_nodes(self.pre, path)

    def ranking(self, path: Path, batch) -> list[dict[str, Any]]:
        return self.qo.layer_errors(self.pre, path, batch, self.layers())  # an image batch, or feeds by name


class TensorRtBackend(OnnxBackend):
    """TensorRT-ready symmetric Q/DQ ONNX (checked here in ONNX Runtime); fp16 is a builder flag, delivered as a
    trtexec build bundle (a directory)."""

    name = "tensorrt"

    def __init__(self, config, source, fp32_art, work, calib) -> None:
        from edgetl.quantize import onnxruntime as qo

        QuantizerBackend.__init__(self, config, source, fp32_art, work, calib)
        self.qo = qo
        self.pre = self.reference = fp32_art.path  # no ORT-specific optimisation: TensorRT parses this graph
        self.pre_info = {}

    @classmethod
    def suffix(cls, config: QuantizeConfig) -> str:
        return "" if config.precision is QuantPrecision.FP16 else ".onnx"

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any]]:
        from edgetl.quantize.tensorrt import make_qdq

        if self.config.precision is QuantPrecision.FP16:
            return self.pre, {"format": "fp32 ONNX; fp16 is the TensorRT builder flag --fp16"}
        self.n += 1
        out = self.work / f"candidate{self.n}.onnx"
        return out, make_qdq(self.pre, out, self.calib, exclude=exclude, calibration=self.method)

    def note(self) -> str | None:
        if self.config.precision is QuantPrecision.FP16:
            return ("fp16 is applied by the TensorRT builder on the device; the accuracy here is the fp32 ONNX the "
                    "engine is built from")
        return ("int8 is checked on the Q/DQ ONNX in ONNX Runtime (no TensorRT engine is built here); build it on "
                "the device (edgetl export --format tensorrt) and evaluate the engine there")

    def unquantized(self, path: Path) -> list[dict[str, str]]:
        if path == self.pre:
            return []
        return self.qo.unquantized_nodes(self.pre, path)

    def deliver(self, chosen: Attempt, record: StageRecord, out: Path) -> Artifact:
        if out.suffix == ".onnx":
            return super().deliver(chosen, record, out)
        return self._deliver_bundle(chosen, record, out)

    def _deliver_bundle(self, chosen: Attempt, record: StageRecord, out: Path) -> Artifact:
        import os

        base = self.fp32_art if self.source.format is Format.TORCH else self.source
        staged = base.with_stage(record, path=chosen.path, format=Format.ONNX, extra=self.delivered_extra(chosen))
        precision = "fp16" if self.config.precision is QuantPrecision.FP16 else None
        scratch = chosen.path.parent / "bundle" / out.name
        scratch.parent.mkdir()
        bundle = export_function("tensorrt", "export_tensorrt")(staged, scratch, precision=precision)
        write_metadata(bundle, metadata_path(bundle))  # NAME.engine.edgetl.json: what reloads the bundle
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


class OpenVinoBackend(QuantizerBackend):
    """NNCF int8 or fp16 weight compression on an OpenVINO model."""

    name = "openvino"
    sources = (Format.TORCH, Format.ONNX, Format.OPENVINO)
    output = Format.OPENVINO
    fp32_export = ("openvino", "export_openvino")

    def __init__(self, config, source, fp32_art, work, calib) -> None:
        import openvino as ov

        from edgetl.quantize import openvino as qv

        super().__init__(config, source, fp32_art, work, calib)
        self.qv = qv
        self.fp32_model = ov.Core().read_model(str(fp32_art.path))

    @classmethod
    def fp32(cls, artifact: Artifact, config: QuantizeConfig, work: Path) -> Artifact:
        if artifact.format is Format.OPENVINO:
            return artifact
        return export_function("openvino", "export_openvino")(artifact, work / "fp32.xml")

    @classmethod
    def fp32_by_contract(cls, artifact: Artifact, config: QuantizeConfig, work: Path, feed: dict) -> Artifact:
        if artifact.format is not Format.TORCH:
            return cls.fp32(artifact, config, work)
        import openvino as ov
        import torch

        from edgetl.contract_shapes import openvino_partial_shapes
        from edgetl.errors import ExportError

        names = artifact.contract.input_names
        partial = openvino_partial_shapes(artifact.contract)
        try:  # traced on a real sample: inputs such as a sample rate cannot be made up
            model = ov.convert_model(artifact.model.eval(), example_input=tuple(torch.from_numpy(
                np.asarray(feed[n])) for n in names), input=[ov.PartialShape(partial[n]) for n in names])
        except Exception as e:  # noqa: BLE001 - the frontends raise their own types
            raise ExportError(f"OpenVINO could not convert the model: {str(e).strip().splitlines()[0][:300]}") from None
        return export_function("openvino", "export_openvino")(artifact, work / "fp32.xml", ov_model=model)

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

    def deliver(self, chosen: Attempt, record: StageRecord, out: Path) -> Artifact:
        source = self.source
        base = replace(source, format=Format.OPENVINO, path=self.fp32_art.path, model=None) \
            if source.format is Format.TORCH else source
        ir = export_function("openvino", "export_openvino")(
            base, out, ov_model=chosen.model, compress_to_fp16=self.config.precision is QuantPrecision.FP16)
        result = base.with_stage(record, path=out, format=Format.OPENVINO,
                                 extra={**ir.extra, **self.delivered_extra(chosen)})
        write_metadata(result)
        return result


class Pt2eBackend(QuantizerBackend):
    """PT2E static int8 (XNNPACKQuantizer) on the PyTorch model, lowered to an XNNPACK ``.pte``.

    Checked against the fp32 ``.pte`` from the same lowering, both run by the ExecuTorch runtime.
    """

    name = "pytorch"
    sources = (Format.TORCH,)
    output = Format.EXECUTORCH
    fp32_export = ("executorch", "export_executorch")

    def __init__(self, config, source, fp32_art, work, calib) -> None:
        from edgetl.quantize import pt2e

        super().__init__(config, source, fp32_art, work, calib)
        self.pt2e = pt2e
        self._layers: list[dict[str, str]] | None = None

    @classmethod
    def check_source(cls, artifact: Artifact) -> None:
        from edgetl.errors import ConfigError

        if artifact.format is not Format.TORCH:
            raise ConfigError(f"backend pytorch quantizes a torch model, not a {artifact.format.value} one; give "
                              "the PyTorch checkpoint (.pt): PT2E quantizes the PyTorch graph")
        if artifact.model is None:
            raise ConfigError("backend pytorch needs the PyTorch model in memory; load the checkpoint with load_model")

    @classmethod
    def fp32_by_contract(cls, artifact: Artifact, config: QuantizeConfig, work: Path, feed: dict) -> Artifact:
        from edgetl.quantize import pt2e

        return pt2e.write_fp32_pte(artifact, work / "fp32.pte", feed)

    def run_outputs(self, path: Path, feeds: list[dict], contract) -> list[dict[str, np.ndarray]]:
        return self.pt2e.run_pte(path, feeds, contract)

    def _feed(self) -> dict | None:
        return None if isinstance(self.calib, np.ndarray) else self.calib[0]

    def layers(self) -> list[dict[str, str]]:
        if self._layers is None:
            self._layers = self.pt2e.quantizable_layers(self.source.model, self.source, feed=self._feed())
        return self._layers

    def build(self, exclude: list[str]) -> tuple[Path, dict[str, Any], Any]:
        self.n += 1
        out = self.work / f"candidate{self.n}.pte"
        converted, info = self.pt2e.quantize_module(self.source.model, self.calib, artifact=self.source,
                                                    exclude=exclude, per_channel=self.config.per_channel)
        lowered = self.pt2e.write_pte(converted, self.source, out, feed=self._feed())
        return out, {**lowered, **info}, converted

    def unquantized(self, converted) -> list[dict[str, str]]:
        return self.pt2e.unquantized_layers(converted, self.layers())

    def ranking(self, converted, batch: np.ndarray) -> list[dict[str, Any]]:
        return self.pt2e.layer_errors(self.source.model, converted, batch, self.layers(), artifact=self.source)

    def delivered_extra(self, chosen: Attempt) -> dict[str, Any]:
        info = chosen.info
        return {**super().delivered_extra(chosen), "executorch_non_delegated_ops": info.get("non_delegated_ops", {}),
                "executorch_delegated_ops": info.get("delegated_ops", {})}
