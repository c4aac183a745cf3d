"""OpenVINO int8 with NNCF post-training quantization, and fp16 weight compression.

``nncf.quantize`` runs on the ``ov.Model`` (no PyTorch in the loop) with the calibration images wrapped in
``nncf.Dataset``. For CNNs ``model_type`` stays ``None`` (the transformer type changes the quantization scheme);
the preset follows the activations: ``performance`` (symmetric) when every activation is non-negative after its
producer (ReLU nets), ``mixed`` (asymmetric activations) when the model has SiLU/Swish, GELU, ELU, PReLU or
Mish, whose outputs go negative and would lose half the int8 range under symmetric quantization.

Example::

    q, info = quantize_ov(ov_model, calib_batch, preset="auto", ignored=("/blocks.0/conv/Conv",))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetl.errors import ConfigError, ExportError, MissingDependencyError

__all__ = ["auto_preset", "compute_ops", "layer_errors", "quantize_ov", "unquantized_ops"]

log = logging.getLogger(__name__)

WEIGHTED_TYPES = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData",
                  "GroupConvolutionBackpropData"}
_SIGNED_ACTIVATIONS = {"Swish", "HSwish", "Gelu", "Elu", "PRelu", "Mish", "Sigmoid", "SoftPlus", "Selu"}
_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize", "FakeConvert"}
TARGET_DEVICES = ("any", "cpu", "cpu_spr", "gpu", "npu")


def _require():
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(e.name or "nncf", "openvino", "OpenVINO int8 quantization") from None


def auto_preset(ov_model) -> str:
    """``mixed`` when the model has activations with negative outputs (SiLU, GELU ...), else ``performance``."""
    types = {op.get_type_name() for op in ov_model.get_ordered_ops()}
    return "mixed" if types & _SIGNED_ACTIVATIONS else "performance"


def _weight_const(op):
    """The Constant feeding ``op`` as a weight (through Convert/dequantize chains), or None."""
    for i in range(1, op.get_input_size()):
        node = op.input_value(i).get_node()
        for _ in range(6):
            if node.get_type_name() == "Constant":
                shape = list(node.get_output_shape(0))
                size = int(np.prod(shape)) if shape else 1
                if len(shape) >= 2 and size >= 64:
                    return node
                break
            if node.get_type_name() not in _PASS_THROUGH:
                break
            node = node.input_value(0).get_node()
    return None


def compute_ops(ov_model) -> list[dict[str, str]]:
    """The weighted ops (convolutions, MatMuls with constant weights), with the weight's name as layer name."""
    out = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_TYPES:
            w = _weight_const(op)
            if w is None:
                continue
            layer = w.get_friendly_name()
            layer = layer[: -len(".weight")] if layer.endswith(".weight") else layer
            out.append({"node": op.get_friendly_name(), "op": op.get_type_name(), "layer": layer})
    return out


def _quantized_input(op) -> bool:
    return any(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(op.get_input_size()))


def unquantized_ops(q_model, fp32_ops: list[dict[str, str]]) -> list[dict[str, str]]:
    """Weighted ops of the fp32 model that NNCF left in float (no FakeQuantize on their activation input)."""
    by_name = {op.get_friendly_name(): op for op in q_model.get_ordered_ops()}
    out = []
    for nd in fp32_ops:
        op = by_name.get(nd["node"])
        if op is not None and not _quantized_input(op):
            out.append(nd)
    return out


def _calibration_items(calib) -> list:
    """NNCF's dataset items: one image per item from a float32 N x C x H x W batch, or the feeds themselves (a
    list of ``{input name: array}``, one sample each) for a model of any inputs."""
    if isinstance(calib, np.ndarray):
        return [np.ascontiguousarray(calib[i : i + 1]) for i in range(len(calib))]
    return [{k: np.asarray(v, order="C") for k, v in feed.items()} for feed in calib]  # a 0-d sample rate stays 0-d


def quantize_ov(
    ov_model,
    calib_batch: np.ndarray | Sequence[dict[str, np.ndarray]],
    *,
    preset: str = "auto",
    target_device: str = "cpu",
    ignored: Sequence[str] = (),
    plain_defaults: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize`` of ``ov_model`` on ``calib_batch`` (float32 N x C x H x W, or a list of feeds by input
    name for a model of any inputs); returns (model, info).

    ``ignored`` names ops (their friendly names) to keep in float. ``plain_defaults`` calls ``nncf.quantize``
    with nothing but the dataset: the benchmark baseline.
    """
    _require()
    import nncf

    batch1 = _calibration_items(calib_batch)
    dataset = nncf.Dataset(batch1)
    if plain_defaults:
        return _run(nncf.quantize, ov_model, dataset), {"preset": "default", "defaults": True}
    if target_device not in TARGET_DEVICES:
        from edgetl.errors import UnknownNameError

        raise UnknownNameError("NNCF target device", target_device, TARGET_DEVICES)
    chosen = auto_preset(ov_model) if preset == "auto" else preset
    names = {op.get_friendly_name() for op in ov_model.get_ordered_ops()}
    unknown = [n for n in ignored if n not in names]
    if unknown:
        from edgetl.errors import UnknownNameError

        weighted = [d["node"] for d in compute_ops(ov_model)]
        raise UnknownNameError("OpenVINO layer to keep in float", unknown[0], weighted or sorted(names))
    kw: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if chosen == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "target_device": getattr(nncf.TargetDevice, target_device.upper()),
        "subset_size": len(batch1),
        "model_type": None,
    }
    if ignored:
        kw["ignored_scope"] = nncf.IgnoredScope(names=list(ignored))
    q = _run(nncf.quantize, ov_model, dataset, **kw)
    return q, {"preset": chosen, "preset_choice": preset, "target_device": target_device,
               "subset_size": len(batch1), "model_type": None, "ignored": list(ignored)}


def _run(fn, *args, **kw):
    import io
    from contextlib import redirect_stdout

    try:
        with redirect_stdout(io.StringIO()):  # NNCF draws its own progress on stdout; --json owns stdout
            return fn(*args, **kw)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - NNCF raises many types
        raise ExportError(f"NNCF quantization failed: {_first_line(e)}") from None


# --------------------------------------------------------------------------- per-layer error
def _source(output):
    """The float tensor behind a FakeQuantize (what the quantizer saw)."""
    node = output.get_node()
    if node.get_type_name() == "FakeQuantize":
        return node.input_value(0)
    return output


def _producer(output) -> tuple[str, int]:
    """(op name, port) of the tensor behind ``output``, through the Result node a model output may be."""
    node = output.get_node()
    if node.get_type_name() == "Result":
        output = node.input_value(0)
        node = output.get_node()
    return node.get_friendly_name(), output.get_index()


def _taps(model, names: list[str]) -> tuple[Any, list[tuple[int, int]]]:
    """Clone ``model`` with the input source and output of each named op added as outputs; index pairs."""
    m = model.clone()
    by_name = {op.get_friendly_name(): op for op in m.get_ordered_ops()}
    wanted, pairs = [], []
    for name in names:
        op = by_name.get(name)
        if op is None:
            pairs.append((-1, -1))
            continue
        src = _source(op.input_value(0))
        pairs.append((len(wanted), len(wanted) + 1))
        wanted += [src, op.output(0)]
    m.add_outputs(wanted)
    # add_outputs adds a tensor once: heads that share an input (a detector's box, score and landmark convs) tap
    # the same tensor, so each tap's index is looked up, not counted
    where = {_producer(o): i for i, o in enumerate(m.outputs)}
    index = [where[_producer(w)] for w in wanted]
    return m, [(index[a], index[b]) if a >= 0 else (-1, -1) for a, b in pairs]


def _collect(model, batch, names: list[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    import openvino as ov

    m, pairs = _taps(model, names)
    compiled = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    req = compiled.create_infer_request()
    acc: list[list[list[np.ndarray]]] = [[[], []] for _ in names]
    for item in _calibration_items(batch):
        res = req.infer(item if isinstance(item, dict) else {0: item})
        for k, (a, b) in enumerate(pairs):
            if a >= 0:
                acc[k][0].append(np.array(res[compiled.outputs[a]], dtype=np.float32))
                acc[k][1].append(np.array(res[compiled.outputs[b]], dtype=np.float32))
    return [(np.concatenate(x), np.concatenate(y)) if x else None for x, y in acc]


def layer_errors(fp32_model, q_model, batch, ops: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per weighted op, the noise-to-signal ratio it adds (output NSR minus input NSR), largest first; ``batch``
    is a float32 image batch or a list of feeds by input name."""
    from edgetl.quantize.ort_layers import _nsr

    names = [d["node"] for d in ops]
    f = _collect(fp32_model, batch, names)
    q = _collect(q_model, batch, names)
    res = []
    for d, fv, qv in zip(ops, f, q, strict=True):
        if fv is None or qv is None:
            continue
        n_in, n_out = _nsr(fv[0], qv[0]), _nsr(fv[1], qv[1])
        res.append({**d, "nsr_in": n_in, "nsr_out": n_out, "added": n_out - n_in})
    res.sort(key=lambda r: r["added"], reverse=True)
    return res


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
