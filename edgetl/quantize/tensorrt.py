"""An explicitly quantized (Q/DQ) ONNX laid out the way TensorRT fuses it.

TensorRT builds int8 kernels from Q/DQ pairs it can fuse into the neighbouring layer; where a pair sits decides
whether a layer runs int8 or falls back to fp32 around an extra reformat. Following the Q/DQ placement
recommendations of TensorRT's developer guide:

* every input of a weighted op (Conv, ConvTranspose, Gemm, MatMul) is quantized: the activation through a
  QuantizeLinear -> DequantizeLinear pair, the weight stored as int8 with a per-channel DequantizeLinear on the
  output-channel axis (axis 0 for Conv and for Gemm with ``transB=1``; the last axis for MatMul);
* outputs of weighted ops are not quantized (TensorRT fuses bias, BN and activations first and quantizes the
  fused output itself when the next layer's input Q/DQ asks for it);
* both inputs of a residual Add are quantized, so the Add fuses into the preceding convolution as an int8
  element-wise epilogue;
* everything symmetric (zero point 0, int8): TensorRT supports no other int8 scheme. Biases stay float.

Activation scales come from the calibration images: the largest magnitude seen (``minmax``), a high percentile
of the magnitudes (``percentile``, 99.99), the mean of each image's largest magnitude (``mean-minmax``), or the threshold minimising KL divergence (``entropy``, TensorRT's
own calibrator). The result is meant for ``edgetl export --format tensorrt`` (``trtexec --stronglyTyped``, or
``--int8`` on TensorRT 8.x), and runs as is in ONNX Runtime for the accuracy check.

Example::

    info = make_qdq(Path("model.onnx"), Path("model.qdq.onnx"), calib_batch, exclude=["node_Conv_12"])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import ExportError, MissingDependencyError

__all__ = ["QUANTIZED_OPS", "make_qdq", "weight_axis"]

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PERCENTILE = 99.99


def _require() -> None:
    import importlib.util

    for m in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(m) is None:
            raise MissingDependencyError(m, "tensorrt", "TensorRT Q/DQ quantization")


def weight_axis(node, weight: np.ndarray) -> int:
    """The output-channel axis of a weighted node's weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1  # weight is (C_in, C_out / groups, k...)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else weight.ndim - 1
    return weight.ndim - 1  # MatMul: (K, N)


def _amax(values: np.ndarray | list[np.ndarray], method: str) -> float:
    """The clipping magnitude of one activation tensor (``values``: calibration images on axis 0, or one array
    per calibration feed of a model of any inputs)."""
    per = [v for v in values if v.size] if isinstance(values, list) else \
        list(values.astype(np.float32).reshape(len(values), -1)) if values.size else []
    if not per:
        return 0.0
    if method == "mean-minmax":  # each sample's own largest magnitude, averaged: outlier samples do not set it
        return float(np.mean([np.abs(v).max() for v in per]))
    a = np.abs(np.concatenate([v.ravel() for v in per]).astype(np.float32))
    if method == "percentile":
        return float(np.percentile(a, PERCENTILE))
    if method == "entropy":
        return _entropy_amax(a)
    return float(a.max())


def _entropy_amax(a: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the clipping threshold whose 128-level histogram has the least KL
    divergence from the full one."""
    top = float(a.max())
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(a, bins=bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, 16):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()
        chunks = np.array_split(hist[:i], levels)
        q = np.concatenate([np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in chunks])
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i]) if best_i < len(edges) else top


def _activation_ranges(path: Path, tensors: list[str], batch: np.ndarray | Sequence[dict[str, np.ndarray]],
                       method: str) -> dict[str, float]:
    """Each tensor's clipping magnitude on ``batch``: an image batch for the single input, or feeds by input name
    (a model of any inputs, calibrated from its contract's unlabeled data)."""
    from edgetl.quantize.ort_layers import _run_with_taps, tap_feeds

    values: dict[str, Any] = tap_feeds(path, tensors, batch) if not isinstance(batch, np.ndarray) else \
        _run_with_taps(path, tensors, batch)
    return {t: _amax(v, method) for t, v in values.items()}


def make_qdq(
    fp32: Path,
    out: Path,
    calib_batch: np.ndarray | Sequence[dict[str, np.ndarray]],
    *,
    exclude: Sequence[str] = (),
    calibration: str = "mean-minmax",
) -> dict[str, Any]:
    """Write the TensorRT-ready Q/DQ ONNX of ``fp32`` to ``out``; ``exclude`` names nodes kept in float.
    ``calib_batch`` is an image batch (one input) or a list of feeds by input name (any inputs, unlabeled).

    Returns what was placed: counts of quantized layers, residual Adds and activation quantizers, and the
    weighted nodes of op types this placement does not quantize.
    """
    _require()
    import onnx

    proto = _load_opset13(fp32)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    weighted, adds = _quantizable_nodes(graph, inits, set(exclude))
    act_uses = _activation_uses(weighted, adds)
    tensors = sorted(act_uses)
    ranges = _activation_ranges(fp32, tensors, calib_batch, calibration) if tensors else {}
    act_nodes, act_inits = _activation_qdq(act_uses, ranges)
    w_nodes, w_inits, replaced = _weight_dq(weighted, inits)
    still_used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep + act_inits + w_inits)
    _insert_before_consumers(graph, act_nodes + w_nodes)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the Q/DQ graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
    onnx.save(proto, str(out))
    return {"format": "QDQ", "symmetric": True, "activation": "int8", "weight": "int8 per-channel",
            "calibration": calibration, "quantized_layers": len(weighted), "residual_adds": len(adds),
            "activation_quantizers": len(tensors), "unsupported": _unsupported(proto, inits)}


def _load_opset13(fp32: Path):
    """The ONNX model with every node named; per-channel Q/DQ needs opset 13."""
    import onnx

    from edgetl.quantize.onnxruntime import name_nodes

    proto = onnx.load(str(fp32))
    name_nodes(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ExportError(f"per-channel Q/DQ needs ONNX opset 13 or later; {fp32.name} has opset {opset}: "
                          "re-export with --opset 13 or later (17 for TensorRT 8.5)")
    return proto


def _quantizable_nodes(graph, inits: dict[str, Any], excluded: set[str]) -> tuple[list[Any], list[Any]]:
    """The weighted nodes to quantize (a constant weight, not excluded) and the residual Adds (two
    activation inputs) whose inputs get Q/DQ so the Add fuses into the convolution before it."""
    weighted, adds = [], []
    for n in graph.node:
        if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in inits:
            if n.name not in excluded:
                weighted.append(n)
        elif n.op_type == "Add" and n.name not in excluded and len(n.input) == 2 and \
                not any(i in inits for i in n.input):
            adds.append(n)
    return weighted, adds


def _activation_uses(weighted: list[Any], adds: list[Any]) -> dict[str, list[tuple[Any, int]]]:
    """Activation tensor -> the (consumer node, input index) pairs that read it through a Q/DQ."""
    uses: dict[str, list[tuple[Any, int]]] = {}
    for n in weighted:
        uses.setdefault(n.input[0], []).append((n, 0))
    for n in adds:
        for k in (0, 1):
            uses.setdefault(n.input[k], []).append((n, k))
    return uses


def _activation_qdq(uses: dict[str, list[tuple[Any, int]]], ranges: dict[str, float]) -> tuple[list[Any], list[Any]]:
    """A symmetric int8 QuantizeLinear -> DequantizeLinear pair per activation tensor, its consumers rewired."""
    from onnx import helper, numpy_helper

    zero8 = numpy_helper.from_array(np.zeros((), dtype=np.int8), "qdq_zero_point_int8")
    nodes, inits = [], [zero8]
    for t in sorted(uses):
        scale = max(ranges.get(t, 0.0), 1e-8) / 127.0
        s_name, q_out, dq_out = f"{t}_qdq_scale", f"{t}_quantized", f"{t}_dequantized"
        inits.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), s_name))
        nodes.append(helper.make_node("QuantizeLinear", [t, s_name, zero8.name], [q_out], name=f"{t}_QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, zero8.name], [dq_out],
                                      name=f"{t}_DequantizeLinear"))
        for node, k in uses[t]:
            node.input[k] = dq_out
    return nodes, inits


def _weight_dq(weighted: list[Any], inits: dict[str, Any]) -> tuple[list[Any], list[Any], set[str]]:
    """Each weight stored as int8 (symmetric, per output channel) behind a DequantizeLinear; the float
    initializers it replaces."""
    from onnx import helper, numpy_helper

    nodes, new_inits, replaced = [], [], set()
    for n in weighted:
        w_name = n.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        axis = weight_axis(n, w)
        reduce = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
        scale = np.maximum(amax, 1e-12) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        q_name, s_name, z_name = f"{w_name}_int8", f"{w_name}_scale", f"{w_name}_zero_point"
        dq_out = f"{w_name}_dequantized_{n.name}"
        new_inits += [numpy_helper.from_array(q, q_name),
                      numpy_helper.from_array(scale.astype(np.float32), s_name),
                      numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z_name)]
        nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], axis=axis,
                                      name=f"{w_name}_DequantizeLinear_{n.name}"))
        n.input[1] = dq_out
        replaced.add(w_name)
    return nodes, new_inits, replaced


def _insert_before_consumers(graph, new_nodes: list[Any]) -> None:
    """Keep the graph topologically sorted: each new node goes right before the first node that consumes it
    (after the new nodes it reads itself)."""
    by_out = {n.output[0]: n for n in new_nodes}
    ordered, placed = [], set()

    def place(name: str) -> None:
        if name in placed or name not in by_out:
            return
        node = by_out[name]
        for i in node.input:
            place(i)
        ordered.append(node)
        placed.add(name)

    for n in list(graph.node):
        for i in n.input:
            place(i)
        ordered.append(n)
    del graph.node[:]
    graph.node.extend(ordered)


def _unsupported(proto, fp32_inits) -> list[dict[str, str]]:
    """Weighted nodes of op types this placement does not quantize (kept float; named in the report)."""
    from edgetl.quantize.onnxruntime import _DATA_OPS, _is_weight

    out = []
    for n in proto.graph.node:
        if n.op_type in QUANTIZED_OPS or n.op_type in _DATA_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        w = next((i for i in n.input if i in fp32_inits and _is_weight(fp32_inits[i])), None)
        if w is not None:
            out.append({"node": n.name, "op": n.op_type,
                        "layer": w[: -len(".weight")] if w.endswith(".weight") else w})
    return out
