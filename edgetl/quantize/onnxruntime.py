"""ONNX Runtime int8: static QDQ with calibration (CNNs), dynamic int8 (Linear/MatMul-heavy models), fp16.

Static int8 runs ``onnxruntime.quantization.shape_inference.quant_pre_process`` first (shape inference and graph
optimisation, as ONNX Runtime recommends) and then ``quantize_static`` in QDQ format with per-channel weights.

The activation x weight types are chosen for the CPU at hand (:func:`choose_ort_types`), because the wrong ones
make int8 *slower* than fp32 without any warning. Measured on this project's machine (Xeon with AVX512-VNNI and
AMX, 2 threads, batch 1; /work/shared/FIELD.md): ONNX Runtime's default S8S8 QDQ fused only 9/20 (resnet18) to
27/81 (efficientnet_b0) convolutions and no Add, and ran 4.2x / 3.6x slower than fp32 on mobilenet_v3_small /
efficientnet_b0; U8S8 (uint8 activations, int8 weights) fused every Conv and Add (resnet18 6.8 ms vs 19.6 ms
fp32). So on x86 the choice is U8S8; without VNNI its u8 x s8 dot product (VPMADDUBSW) can saturate, which
ONNX Runtime's documentation answers with 7-bit weights (``reduce_range``). On ARM64, S8S8 is the native signed
dot product. The benchmark suite ``benchmarks/suites/quantize`` re-measures U8S8 against the defaults.

Example::

    types = choose_ort_types()                       # OrtTypeChoice(activation='u8', weight='s8', ...)
    quantize_static_onnx(Path("m.onnx"), Path("m.int8.onnx"), calib_batch, types=types)
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import ExportError, MissingDependencyError
from edgetl.quantize.onnx_size import explain_size, size_breakdown
from edgetl.quantize.ort_layers import layer_errors

__all__ = [
    "OrtTypeChoice",
    "choose_ort_types",
    "compute_nodes",
    "convert_fp16",
    "cpu_flags",
    "explain_size",
    "layer_errors",
    "name_nodes",
    "preprocess",
    "quantize_dynamic_onnx",
    "quantize_static_onnx",
    "size_breakdown",
    "unquantized_nodes",
]

log = logging.getLogger(__name__)
# ONNX Runtime's calibrators report progress with print(); it goes to this logger instead (the CLI shows
# third-party loggers with --verbose only).
_ORT_LOG = logging.getLogger("onnxruntime.quantization")


@contextlib.contextmanager
def _ort_prints() -> Iterator[None]:
    """Library code never prints: what ONNX Runtime's quantizer prints becomes warnings of its own logger."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                _ORT_LOG.warning("%s", line.rstrip())

# Ops with weights whose int8 version matters for speed; what "a layer" means in reports and sensitivity.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _require() -> None:
    import importlib.util

    for m in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(m) is None:
            raise MissingDependencyError(m, "onnx", "ONNX Runtime quantization")


# --------------------------------------------------------------------------- type choice
@dataclass(frozen=True)
class OrtTypeChoice:
    """The activation / weight int8 types and why they were chosen."""

    activation: str  # "u8" | "s8"
    weight: str  # "s8"
    reduce_range: bool
    reason: str

    @property
    def name(self) -> str:
        return f"{self.activation}{self.weight}"

    def to_dict(self) -> dict[str, Any]:
        return {"types": self.name, "activation": self.activation, "weight": self.weight,
                "reduce_range": self.reduce_range, "reason": self.reason}


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_ort_types(*, flags: Iterable[str] | None = None, machine: str | None = None,
                     forced: str = "auto") -> OrtTypeChoice:
    """Pick int8 types that are fast on this CPU (or on ``machine`` with ``flags``; ``forced`` overrides)."""
    machine = (machine or platform.machine()).lower()
    flags = set(cpu_flags() if flags is None else flags)
    if forced == "s8s8":
        return OrtTypeChoice("s8", "s8", False, "forced: S8S8")
    if forced == "u8s8":
        vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
        return OrtTypeChoice("u8", "s8", not vnni and machine in ("x86_64", "amd64"), "forced: U8S8")
    if machine in ("aarch64", "arm64"):
        return OrtTypeChoice("s8", "s8", False, "ARM64: signed int8 dot products (SDOT) take S8S8 natively")
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return OrtTypeChoice("u8", "s8", False, "x86 with VNNI: U8S8 QDQ fuses every Conv/Add (S8S8 measured up to "
                                                "4x slower than fp32 here)")
    if machine in ("x86_64", "amd64", "i686"):
        return OrtTypeChoice("u8", "s8", True, "x86 without VNNI: U8S8 with 7-bit weights (reduce_range) to avoid "
                                               "VPMADDUBSW saturation")
    return OrtTypeChoice("u8", "s8", False, f"unknown CPU {machine!r}: U8S8, ONNX Runtime's most portable choice")


# --------------------------------------------------------------------------- graph helpers
def name_nodes(proto) -> None:
    """Give every node a unique name (exclusion lists and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(proto.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def preprocess(src: Path, dst: Path) -> dict[str, Any]:
    """``quant_pre_process`` (shape inference + ORT graph optimisation); falls back to the plain graph."""
    _require()
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info: dict[str, Any] = {"pre_process": "quant_pre_process"}
    try:
        with _ort_prints():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as e:  # noqa: BLE001 - pre-processing improves results but is optional
        log.warning("onnxruntime quant_pre_process failed (%s); quantizing the graph as exported", _first_line(e))
        onnx.save(onnx.load(str(src)), str(dst))
        info = {"pre_process": "skipped", "pre_process_error": _first_line(e)}
    proto = onnx.load(str(dst))
    name_nodes(proto)
    onnx.save(proto, str(dst))
    return info


def compute_nodes(path: Path) -> list[dict[str, str]]:
    """The weighted nodes of a float ONNX, each with its node name, op, and the layer name taken from its weight
    initializer (``blocks.3.conv.weight`` -> ``blocks.3.conv``).

    Weighted means Conv/Gemm/MatMul with a constant weight, or any other op fed a float constant of at least
    two dimensions and 64 values (an ``Einsum`` with a weight, say), which int8 would also have to cover.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        weight = None
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits:
            weight = n.input[1]
        elif n.op_type not in _DATA_OPS:
            weight = next((i for i in n.input if i in inits and _is_weight(inits[i])), None)
        if weight is None:
            continue
        layer = weight[: -len(".weight")] if weight.endswith(".weight") else weight
        out.append({"node": n.name, "op": n.op_type, "layer": layer, "weight": weight, "input": n.input[0],
                    "output": n.output[0]})
    return out


_DATA_OPS = {"Reshape", "Expand", "Tile", "Pad", "Slice", "Gather", "Resize", "Shape", "ConstantOfShape",
             "Concat", "Split", "Squeeze", "Unsqueeze", "Transpose", "Cast"}


def _is_weight(init) -> bool:
    import onnx

    size = 1
    for d in init.dims:
        size *= d
    return len(init.dims) >= 2 and size >= 64 and init.data_type in (onnx.TensorProto.FLOAT,
                                                                      onnx.TensorProto.FLOAT16)


def unquantized_nodes(fp32_path: Path, q_path: Path) -> list[dict[str, str]]:
    """Weighted nodes of ``fp32_path`` that still run in float in ``q_path``.

    A node counts as quantized when its weight reaches it through a DequantizeLinear (QDQ) or when the quantizer
    replaced it by an integer op (QOperator / dynamic: ``QLinearConv``, ``MatMulInteger``... named after it).
    What remains is what the backend could not (or was told not to) quantize; it is named in the report.
    """
    import onnx

    proto = onnx.load(str(q_path), load_external_data=False)
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    by_name = {n.name: n for n in proto.graph.node}
    integer_ops = [n for n in proto.graph.node if n.op_type in _INTEGER_OPS]
    out = []
    for nd in compute_nodes(fp32_path):
        q = by_name.get(nd["node"])
        if q is None or q.op_type in _INTEGER_OPS:
            continue  # replaced by an integer op (or removed): not float
        via_dq = any(produced_by.get(i) is not None and produced_by[i].op_type == "DequantizeLinear"
                     for i in q.input[1:])
        if nd["weight"] not in q.input and via_dq:
            continue
        if any(m.name.startswith(nd["node"]) for m in integer_ops):
            continue
        out.append({k: nd[k] for k in ("node", "op", "layer")})
    return out


_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QGemm", "QAttention", "DynamicQuantizeLSTM"}


# --------------------------------------------------------------------------- calibration reader
def _reader(path: Path, batch: np.ndarray, *, per_image: bool = False):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    d0 = inp.type.tensor_type.shape.dim[0]
    # One image per call where the range estimator averages per call (mean-minmax): the mean is then over images.
    step = int(d0.dim_value) if d0.HasField("dim_value") and d0.dim_value > 0 else 1 if per_image else 32

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self):
            if self._i >= len(batch):
                return None
            chunk = batch[self._i : self._i + step]
            self._i += step
            if len(chunk) < step and d0.HasField("dim_value"):
                return self.get_next() if self._i < len(batch) else None
            return {inp.name: np.ascontiguousarray(chunk, dtype=np.float32)}

        def rewind(self) -> None:
            self._i = 0

    return _Batches()


_METHODS = {"mean-minmax": "MinMax", "minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
PERCENTILE = 99.99  # ORT's default 99.999 kept outliers: 66.9 % vs 93.1 % (99.99) on the Lite0 teacher


def _calibration_options(calibration: str, activation_symmetric: bool) -> dict[str, Any]:
    """``extra_options`` that make ORT's calibrators estimate what ``calibration`` names.

    ORT's percentile and entropy calibrators default to a *symmetric* range (``CalibTensorRangeSymmetric``): for
    uint8 activations that spends half of the 256 levels on negative values a SiLU output never reaches.
    """
    opts: dict[str, Any] = {"CalibTensorRangeSymmetric": activation_symmetric}
    if calibration == "mean-minmax":
        opts["CalibMovingAverage"] = True  # ORT then averages the per-call min/max instead of taking the extremes
    elif calibration == "percentile":
        opts["CalibPercentile"] = PERCENTILE
    return opts


def quantize_static_onnx(
    fp32: Path,
    out: Path,
    calib_batch: np.ndarray | None,
    *,
    types: OrtTypeChoice,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    calibration: str = "mean-minmax",
    cache: Path | None = None,
    plain_defaults: bool = False,
) -> dict[str, Any]:
    """Static int8 QDQ of the (pre-processed) ``fp32`` ONNX into ``out``.

    ``cache`` keeps the calibrated ranges between calls (ONNX Runtime's calibration cache), so re-quantizing with
    other ``exclude`` lists skips calibration. ``plain_defaults`` runs ``quantize_static`` with its defaults
    (S8S8, per-tensor): the benchmark baseline.
    """
    _require()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kw: dict[str, Any] = {}
    if cache is not None:
        kw["calibration_cache_path"] = str(cache)
    reader = _reader(fp32, calib_batch, per_image=calibration == "mean-minmax") if calib_batch is not None else None
    if plain_defaults:
        with _ort_prints():
            quantize_static(str(fp32), str(out), reader, **kw)
        return {"types": "s8s8", "per_channel": False, "format": "QDQ", "defaults": True}
    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    try:
        with _ort_prints():
            quantize_static(
                str(fp32), str(out), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=types.reduce_range,
                activation_type=qtype[types.activation],
                weight_type=qtype[types.weight],
                nodes_to_exclude=list(exclude),
                calibrate_method=getattr(CalibrationMethod, _METHODS[calibration]),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": types.activation == "s8",
                               **_calibration_options(calibration, types.activation == "s8")},
                **kw,
            )
    except Exception as e:  # noqa: BLE001 - ORT raises ValueError, RuntimeError and its own types
        raise ExportError(f"onnxruntime static quantization failed: {_first_line(e)}") from None
    return {"types": types.name, "per_channel": per_channel, "reduce_range": types.reduce_range, "format": "QDQ",
            "calibration": calibration}


def quantize_dynamic_onnx(fp32: Path, out: Path, *, per_channel: bool = True,
                          exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic int8: weights stored int8, activations quantized per call (MatMul/Gemm-heavy models)."""
    _require()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _ort_prints():
            quantize_dynamic(str(fp32), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=list(exclude), op_types_to_quantize=["MatMul", "Gemm", "Attention",
                                                                                   "LSTM", "Gather"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"onnxruntime dynamic quantization failed: {_first_line(e)}") from None
    return {"types": "dynamic-u8s8", "per_channel": per_channel, "format": "QOperator"}


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """fp16 weights and arithmetic, float32 inputs/outputs kept (``keep_io_types``) so callers need no change."""
    _require()
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(proto, str(out))
    return {"format": "fp16", "keep_io_types": True}


def scratch_dir(near: Path) -> tempfile.TemporaryDirectory:
    near.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".quantize.", dir=near)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
