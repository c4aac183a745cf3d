"""ONNX Runtime per-layer error: what quantizing each weighted layer adds, ranked, for the float fallback.

Both graphs run with extra outputs tapped at every weighted node's input and output (graph optimisation off, so
each tapped tensor exists); a layer's ``added`` error is the noise-to-signal ratio at its output minus the one it
receives. The inputs are an image batch for a single-input model or a list of feeds by input name for a model of
any inputs (a recurrent state, an int64 sample rate), so the fallback that keeps sensitive layers in float works
for any model quantized by its contract.

Example::

    ranked = layer_errors(Path("fp32.onnx"), Path("int8.onnx"), feeds, compute_nodes(Path("fp32.onnx")))
    ranked[0]   # {"node": "Gemm_3", "op": "Gemm", "layer": "cell1", "nsr_in": ..., "nsr_out": ..., "added": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["layer_errors", "tap_feeds"]


def _producer_chain_source(proto, tensor: str) -> str:
    """Follow DequantizeLinear <- QuantizeLinear back to the float tensor that was quantized."""
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    for _ in range(2):
        n = produced_by.get(tensor)
        if n is None or n.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            break
        tensor = n.input[0]
    return tensor


def _session(path: Path, names: list[str]):
    """An ONNX Runtime session of ``path`` with ``names`` added as outputs (graph optimisation off, so each tapped
    tensor exists)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            existing.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def tap_feeds(path: Path, names: list[str], feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """The tensors ``names`` of ``path``, one float32 array per feed (``{input name: array}``, any inputs and
    dtypes: a recurrent state, an int64 sample rate); shapes may differ between feeds (a dynamic H x W)."""
    sess = _session(path, names)
    wanted = [i.name for i in sess.get_inputs()]
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for n, r in zip(names, sess.run(names, {k: np.asarray(feed[k]) for k in wanted}), strict=True):
            outs[n].append(np.asarray(r, dtype=np.float32))
    return {n: v for n, v in outs.items() if v}


def _run_with_taps(path: Path, names: list[str], batch: np.ndarray | Sequence[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """The tensors ``names`` of ``path`` on ``batch``: one float32 image batch fed to the single input (samples
    on axis 0), or a list of feeds by input name (each tensor then flattened and concatenated over the feeds)."""
    if not isinstance(batch, np.ndarray):
        return {n: np.concatenate([a.ravel() for a in v]) for n, v in tap_feeds(path, names, batch).items()}
    sess = _session(path, names)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or len(batch)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(batch) - (len(batch) % step if fixed else 0), step):
        res = sess.run(names, {inp.name: batch[i : i + step]})
        for n, r in zip(names, res, strict=True):
            outs[n].append(np.asarray(r, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in outs.items() if v}


def layer_errors(fp32: Path, quantized: Path, batch: np.ndarray | Sequence[dict[str, np.ndarray]],
                 nodes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The error each weighted layer adds in ``quantized`` relative to ``fp32``, largest first; ``batch`` is an
    image batch for the single input or a list of feeds by input name (any inputs).

    For a layer, ``nsr_out`` is the noise-to-signal ratio of its output and ``nsr_in`` that of the float tensor
    feeding it (before its input quantizer); ``added = nsr_out - nsr_in`` is what quantizing this layer (its
    input and weights) adds on top of the error it receives. One pass of each model ranks every layer.
    """
    import onnx

    qproto = onnx.load(str(quantized), load_external_data=False)
    qnames = {n.name: n for n in qproto.graph.node}
    taps = []
    for nd in nodes:
        q = qnames.get(nd["node"])
        if q is None:
            continue
        taps.append((nd, nd["input"], _producer_chain_source(qproto, q.input[0]), nd["output"], q.output[0]))
    f_names = sorted({t[1] for t in taps} | {t[3] for t in taps})
    q_names = sorted({t[2] for t in taps} | {t[4] for t in taps})
    f = _run_with_taps(fp32, f_names, batch)
    q = _run_with_taps(quantized, q_names, batch)
    res = []
    for nd, f_in, q_in, f_out, q_out in taps:
        if f_in not in f or q_in not in q or f_out not in f or q_out not in q:
            continue
        n_in, n_out = _nsr(f[f_in], q[q_in]), _nsr(f[f_out], q[q_out])
        res.append({**{k: nd[k] for k in ("node", "op", "layer")}, "nsr_in": n_in, "nsr_out": n_out,
                    "added": n_out - n_in})
    res.sort(key=lambda r: r["added"], reverse=True)
    return res


def _nsr(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(np.mean((got.astype(np.float64) - ref) ** 2))
    return noise / max(float(np.mean(ref ** 2)), 1e-12)
