"""PT2E int8 for ExecuTorch / XNNPACK: ``torch.export`` -> ``prepare_pt2e`` -> calibrate -> ``convert_pt2e`` -> ``.pte``.

The quantizer is ExecuTorch's ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config`` (static: int8
activations per tensor with a ``HistogramObserver``, int8 weights symmetric per output channel), so every
quantized op is one XNNPACK runs in int8. The converted graph is re-captured at batch 1 and lowered by the same
function as the fp32 ExecuTorch exporter (:func:`exporters.executorch.lower_to_pte`), so an int8 program and its
fp32 reference differ by quantization alone.

Layers are the modules that own a convolution or linear op (their dotted module path, e.g. ``_blocks.3._project_conv``).
Keeping one in float filters its nodes out of annotation (``set_module_name(name, None)`` is refused by this
quantizer: "quantization_config == None is not supported yet"); XNNPACK then runs that op in fp32 between
dequantize/quantize pairs.

Example::

    gm, info = quantize_module(artifact.model, calib_batch, artifact=artifact, exclude=["_conv_head"])
    write_pte(gm, artifact, Path("model.int8.pte"))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import Artifact
from edgetl.errors import MissingDependencyError

__all__ = ["layer_errors", "quantizable_layers", "quantize_module", "unquantized_layers", "write_pte"]

log = logging.getLogger(__name__)

_WEIGHTED = ("conv1d", "conv2d", "conv3d", "convolution", "linear", "conv_transpose1d", "conv_transpose2d")

# The HistogramObserver re-bins its histogram on every call after the first: on the digits fixture 300 images
# fed as 6 calls of 50 took 33 s, as one call 5.7 s (2 loaded cores). One pass also gives the exact histogram.
# So calibration runs in as few calls as fit this many input values (64 MiB of float32).
_CALIB_VALUES_PER_CALL = 1 << 24


def _require():
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise MissingDependencyError("executorch", "mobile", "PT2E int8 quantization for ExecuTorch") from None
    return XNNPACKQuantizer, get_symmetric_quantization_config, prepare_pt2e, convert_pt2e


def _op_name(node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _is_weighted(node) -> bool:
    return node.op == "call_function" and _op_name(node) in _WEIGHTED


def _is_qdq(node) -> bool:
    return node.op == "call_function" and "quantize_per_" in str(node.target)


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path[len("L['self'].") :] if path.startswith("L['self'].") else path


def _weighted_nodes(gm) -> dict[str, Any]:
    """Conv/linear nodes keyed by ``module_path`` (``module_path#k`` for the k-th further call in one module)."""
    out: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if _is_weighted(node):
            base = _module_path(node) or node.name
            key, k = base, 1
            while key in out:
                key, k = f"{base}#{k}", k + 1
            out[key] = node
    return out


def capture_dynamic(model, artifact: Artifact, batch: int):
    """The fp32 model captured with a dynamic batch up to ``batch`` (calibration and sensitivity run batched);
    falls back to a static batch of 1 for models whose export cannot keep the batch symbolic."""
    import torch

    from edgetl.errors import ExportError
    from edgetl.formats import export_function

    capture = export_function("executorch", "capture")
    example = torch.zeros(artifact.input_spec.batch_shape(2))
    try:
        shapes = ({0: torch.export.Dim("batch", min=1, max=max(int(batch), 2))},)
        return capture(model.eval(), artifact, example, dynamic_shapes=shapes), max(int(batch), 2)
    except ExportError as e:
        log.warning("PT2E: the model does not export with a dynamic batch (%s); calibrating one image at a time", e)
        return capture(model.eval(), artifact, example[:1]), 1


# --------------------------------------------------------------------------- any model, by its contract
def _args(feed: dict, artifact: Artifact) -> tuple:
    """A feed by input name as ``forward``'s positional arguments, in the contract's order. Copied: a view such
    as ``img[None]`` has a 0 stride that torch.export keeps and ExecuTorch refuses ("0 in strides")."""
    import torch

    return tuple(torch.from_numpy(np.array(feed[n], order="C")) for n in artifact.contract.input_names)


def capture_feed(model, artifact: Artifact, feed: dict):
    """``torch.export`` of ``model`` at one real sample's shapes (static: ExecuTorch plans memory for them)."""
    import torch

    from edgetl.errors import ExportError

    try:
        return torch.export.export(model, _args(feed, artifact))
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds
        first = str(e).strip().splitlines()
        raise ExportError(f"torch.export could not capture the model: {first[0][:300] if first else e}") from None


def write_fp32_pte(artifact: Artifact, path: Path, feed: dict) -> Artifact:
    """The fp32 reference ``.pte`` of a model by its contract, lowered like the int8 candidates."""
    from edgetl.artifact import Format, StageRecord
    from edgetl.formats import export_function

    lowered = export_function("executorch", "lower_to_pte")(capture_feed(artifact.model.eval(), artifact, feed), path)
    shapes = {k: list(np.asarray(v).shape) for k, v in feed.items()}
    record = StageRecord(stage="export", options={"format": "executorch", "precision": "fp32", "by_contract": True,
                                                  "static_shapes": shapes, "backend": "xnnpack"})
    extra = {"precision": "fp32", "static_shapes": shapes, "executorch": lowered["executorch"],
             "executorch_non_delegated_ops": lowered["non_delegated_ops"],
             "executorch_delegated_ops": lowered["delegated_ops"]}
    return artifact.with_stage(record, path=Path(path), format=Format.EXECUTORCH, extra=extra)


def run_pte(path: Path, feeds: list[dict], contract) -> list[dict[str, np.ndarray]]:
    """Every output by the contract's names for each feed, run by the ExecuTorch runtime."""
    from executorch.runtime import Runtime as EtRuntime

    from edgetl.errors import ParityError

    method = EtRuntime.get().load_program(str(path)).load_method("forward")
    names = contract.output_names
    out = []
    for feed in feeds:
        import torch

        args = tuple(torch.from_numpy(np.array(feed[n], order="C")) for n in contract.input_names)
        got = [t.numpy().copy() for t in method.execute(args)]  # outputs alias memory the next call reuses
        if len(got) != len(names):
            raise ParityError(f"{Path(path).name} gave {len(got)} outputs; the contract names {len(names)}")
        out.append(dict(zip(names, got, strict=True)))
    return out


def quantizable_layers(model, artifact: Artifact, *, feed: dict | None = None) -> list[dict[str, str]]:
    """The modules owning a conv/linear op: ``{"node": path, "op": aten op, "layer": path}`` in graph order."""
    gm = (capture_dynamic(model, artifact, 2)[0] if feed is None else capture_feed(model, artifact, feed)).module()
    seen: dict[str, dict[str, str]] = {}
    for key, node in _weighted_nodes(gm).items():
        path = key.split("#")[0]
        seen.setdefault(path, {"node": path, "op": _op_name(node), "layer": path})
    return list(seen.values())


def quantize_module(model, calib: np.ndarray, *, artifact: Artifact, exclude: Sequence[str] = (),
                    per_channel: bool = True):
    """PT2E static int8 of ``model`` calibrated on ``calib`` (float32 N x C x H x W, prepared for the input spec).

    Returns ``(converted graph module, info)``; ``exclude`` names modules (dotted paths) whose ops stay float.
    """
    import torch

    xnn_quantizer, symmetric, prepare_pt2e, convert_pt2e = _require()
    from torchao.quantization.pt2e.quantizer import get_module_name_filter

    feeds = not isinstance(calib, np.ndarray)
    program, max_batch = (capture_feed(model, artifact, calib[0]), 1) if feeds else \
        capture_dynamic(model, artifact, len(calib))
    quantizer = xnn_quantizer().set_global(symmetric(is_per_channel=bool(per_channel)))
    if exclude:
        filters = [get_module_name_filter(name) for name in exclude]
        quantizer.set_filter_function(lambda n: not any(f(n) for f in filters))
    prepared = prepare_pt2e(program.module(), quantizer)
    calls = 0
    with torch.no_grad():
        if feeds:  # one sample per call, every input by the contract's order
            for feed in calib:
                prepared(*_args(feed, artifact))
                calls += 1
        else:
            per_image = int(np.prod(calib.shape[1:]))
            step = max(1, min(max_batch, _CALIB_VALUES_PER_CALL // max(per_image, 1), len(calib)))
            for i in range(0, len(calib), step):
                prepared(torch.from_numpy(np.ascontiguousarray(calib[i : i + step])))
                calls += 1
    converted = convert_pt2e(prepared)
    import torchao

    info = {"quantizer": "executorch XNNPACKQuantizer", "quantization_config": "get_symmetric_quantization_config("
            f"is_per_channel={bool(per_channel)}, is_dynamic=False)", "per_channel": bool(per_channel),
            "static": True, "activations": "int8 per tensor, HistogramObserver",
            "weights": f"int8 symmetric {'per output channel' if per_channel else 'per tensor'}",
            "calibration_images": int(len(calib)), "calibration_calls": calls, "kept_float": list(exclude),
            "torchao": torchao.__version__}
    return converted, info


def write_pte(converted, artifact: Artifact, path: str | Path, *, feed: dict | None = None) -> dict[str, Any]:
    """Re-capture the converted module at batch 1 (at ``feed``'s shapes for a model by its contract) and lower
    it to an XNNPACK ``.pte`` (shared with the exporter)."""
    import torch

    from edgetl.formats import export_function

    capture, lower_to_pte = export_function("executorch", "capture"), export_function("executorch", "lower_to_pte")
    program = capture(converted, artifact, torch.zeros(artifact.input_spec.batch_shape(1))) if feed is None \
        else capture_feed(converted, artifact, feed)
    lowered = lower_to_pte(program, path)
    return {"format": "ExecuTorch .pte (XNNPACK delegate)", "executorch": lowered["executorch"],
            "delegated_ops": lowered["delegated_ops"], "non_delegated_ops": lowered["non_delegated_ops"]}


def unquantized_layers(converted, layers: list[dict[str, str]]) -> list[dict[str, str]]:
    """Layers whose weight did not go through a dequantize node (left in float by the quantizer)."""
    nodes = _weighted_nodes(converted)
    float_paths = {key.split("#")[0] for key, n in nodes.items()
                   if len(n.args) > 1 and hasattr(n.args[1], "op") and not _is_qdq(n.args[1])}
    return [d for d in layers if d["node"] in float_paths]


def _float_source(node):
    """The tensor an op's activation quantizer saw: walk back over quantize/dequantize nodes."""
    while _is_qdq(node):
        node = node.args[0]
    return node


def _taps(gm) -> dict[str, tuple[Any, Any]]:
    return {key: (_float_source(n.args[0]), n) for key, n in _weighted_nodes(gm).items()}


def _run_tapped(gm, x, taps: dict[str, tuple[Any, Any]]) -> dict[Any, Any]:
    import torch.fx

    wanted = {n for pair in taps.values() for n in pair}
    seen: dict[Any, Any] = {}

    class _Tap(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                seen[n] = out.detach().double()
            return out

    _Tap(gm).run(*(x if isinstance(x, tuple) else (x,)))
    return seen


def layer_errors(model, converted, batch: np.ndarray, layers: list[dict[str, str]], *,
                 artifact: Artifact, chunk: int = 16) -> list[dict[str, Any]]:
    """Per layer, the noise-to-signal ratio it adds (output NSR minus input NSR, int8 vs fp32), largest first.

    Both graphs run on ``batch`` through an FX interpreter that taps each conv/linear op: its output, and the
    float tensor its activation quantizer saw (so the input NSR is what earlier layers did, and the difference is
    this layer's own activation and weight quantization). Sums are accumulated per chunk to bound memory.
    """
    import torch

    xnn_quantizer, _, prepare_pt2e, _ = _require()
    feeds = not isinstance(batch, np.ndarray)
    reference = capture_feed(model, artifact, batch[0]) if feeds else capture_dynamic(model, artifact, chunk)[0]
    # prepare_pt2e folds BatchNorm into the preceding conv; a quantizer with no config annotates nothing, so this
    # is the fp32 graph with the same (folded) convolutions as the converted one.
    ref_gm = prepare_pt2e(reference.module(), xnn_quantizer())
    ref_taps, q_taps = _taps(ref_gm), _taps(converted)
    keys = [k for k in ref_taps if k in q_taps]
    sums = {k: np.zeros(4) for k in keys}  # noise_in, signal_in, noise_out, signal_out
    steps = [_args(f, artifact) for f in batch] if feeds else \
        [torch.from_numpy(np.ascontiguousarray(batch[i : i + chunk])) for i in range(0, len(batch), chunk)]
    with torch.no_grad():
        for x in steps:
            f = _run_tapped(ref_gm, x, ref_taps)
            q = _run_tapped(converted, x, q_taps)
            for k in keys:
                (fi, fo), (qi, qo) = ref_taps[k], q_taps[k]
                s = sums[k]
                s[0] += float(((q[qi] - f[fi]) ** 2).sum())
                s[1] += float((f[fi] ** 2).sum())
                s[2] += float(((q[qo] - f[fo]) ** 2).sum())
                s[3] += float((f[fo] ** 2).sum())
    per_path: dict[str, dict[str, Any]] = {}
    by_path = {d["node"]: d for d in layers}
    for k in keys:
        path = k.split("#")[0]
        if path not in by_path:
            continue
        s = sums[k]
        n_in, n_out = s[0] / max(s[1], 1e-12), s[2] / max(s[3], 1e-12)
        row = {**by_path[path], "nsr_in": float(n_in), "nsr_out": float(n_out), "added": float(n_out - n_in)}
        if path not in per_path or row["added"] > per_path[path]["added"]:
            per_path[path] = row
    return sorted(per_path.values(), key=lambda r: r["added"], reverse=True)
