"""TensorRT: ``trtexec --dumpProfile --exportProfile --exportLayerInfo`` JSON, parsed into a :class:`LayerProfile`
(run on a board; only the parser is tested here, on a sample in trtexec's documented format)."""

from __future__ import annotations

from typing import Any

from benchmarks.op_names import OpNameMapper
from benchmarks.profilers.base import LayerProfile, OpTime
from edgetl.errors import ConfigError

__all__ = ["parse_trtexec_profile"]


def parse_trtexec_profile(profile: Any, layer_info: Any = None, *, mapper: OpNameMapper | None = None,
                          artifact: str = "model.engine") -> LayerProfile:
    """A :class:`LayerProfile` from trtexec's ``--exportProfile`` JSON (and ``--exportLayerInfo``, for names).

    ``--exportProfile`` writes a list: ``{"count": N}`` then one record per layer with ``name``, ``timeMs``
    (total over the N runs), ``averageMs``, ``medianMs`` and ``percentage``. ``--exportLayerInfo`` (with
    ``--profilingVerbosity=detailed``) writes ``{"Layers": [{"Name", "LayerType", "Metadata", ...}]}``, whose
    ``Metadata`` holds the ONNX node names a fused layer came from (``[ONNX Layer: /features/0/Conv]``).
    """
    if not isinstance(profile, list) or not profile or not isinstance(profile[0], dict) or "count" not in profile[0]:
        raise ConfigError("trtexec profile: expected a JSON list starting with {\"count\": N}")
    count = int(profile[0]["count"])
    meta: dict[str, tuple[str, str]] = {}
    if isinstance(layer_info, dict):
        for layer in layer_info.get("Layers", []):
            if isinstance(layer, dict) and "Name" in layer:
                meta[layer["Name"]] = (str(layer.get("LayerType", "")), str(layer.get("Metadata", "")))
    mapper = mapper or OpNameMapper()
    ops = []
    for i, rec in enumerate(profile[1:], 1):
        if not isinstance(rec, dict) or "name" not in rec or not ({"averageMs", "timeMs"} & set(rec)):
            raise ConfigError(f"trtexec profile: record {i} has no name/averageMs ({rec!r:.120})")
        ms = float(rec["averageMs"]) if "averageMs" in rec else float(rec["timeMs"]) / max(1, count)
        kind, md = meta.get(rec["name"], ("", ""))
        onnx_names = [s.split("]")[0].strip() for s in md.split("[ONNX Layer:")[1:]]
        source = onnx_names[0] if onnx_names else rec["name"].split(" + ")[0]
        ops.append(OpTime(rec["name"], kind, ms, mapper.module(source)))
    total = sum(o.ms for o in ops)
    ops.sort(key=lambda o: -o.ms)
    return LayerProfile(artifact=artifact, format="tensorrt", runtime="trtexec", runtime_version="", threads=None,
                        calls=count, ops=ops, total_ms=total, plain_p50_ms=float("nan"),
                        profiled_p50_ms=float("nan"), sum_tolerance=0.0,
                        notes=["trtexec's per-layer times are GPU compute per layer (--dumpProfile synchronises "
                               "after each layer, so the total exceeds a plain run's); no plain run to compare"])
