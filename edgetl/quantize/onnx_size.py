"""Where an int8 ONNX file's bytes go, and why it may come out no smaller than its fp32 source.

A QDQ int8 model stores int8 weights, but also a scale and zero point per output channel of every weight
(per-channel quantization) and per activation tensor, and one QuantizeLinear/DequantizeLinear node pair per
quantized tensor. On a tiny model those cost more than the int8 weights save: the file is then *larger* than
fp32. :func:`explain_size` says so in one sentence, for the artifact's record and the report's warnings.

Example::

    why = explain_size(Path("model.int8.onnx"), fp32_bytes=91_709)   # None when the int8 file is smaller
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["explain_size", "size_breakdown"]


def size_breakdown(path: Path) -> dict[str, Any]:
    """Where an ONNX file's bytes go: initializer bytes by element type, the number of Quantize/Dequantize nodes,
    and the rest (graph structure, names). Used to say why an int8 file is not smaller than its fp32 source."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    by_type: dict[str, int] = {}
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        by_type[str(arr.dtype)] = by_type.get(str(arr.dtype), 0) + int(arr.nbytes)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    total = Path(path).stat().st_size
    return {"bytes": total, "initializer_bytes": by_type, "qdq_nodes": qdq,
            "other_bytes": max(0, total - sum(by_type.values()))}


def explain_size(int8_path: Path, fp32_bytes: int | None) -> str | None:
    """None when the int8 file is smaller than ``fp32_bytes``; else one sentence saying where its bytes go."""
    if not fp32_bytes:
        return None
    b = size_breakdown(int8_path)
    if b["bytes"] < fp32_bytes:
        return None
    parts = ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in sorted(b["initializer_bytes"].items(), key=lambda t: -t[1]))
    return (f"the int8 file ({b['bytes'] / 1e6:.3f} MB) is not smaller than its fp32 source ({fp32_bytes / 1e6:.3f} "
            f"MB): its tensors are {parts}, plus {b['other_bytes'] / 1e6:.3f} MB of graph for {b['qdq_nodes']} "
            "Quantize/DequantizeLinear nodes, which cost more than the int8 weights save here. Ship the fp32 file if "
            "size matters more than speed")
