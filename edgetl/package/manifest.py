"""The pieces of ``manifest.json``: preprocessing as data, the model's inputs and outputs, precision, history.

Preprocessing is written so that ``run.py`` (numpy + pillow) reproduces :func:`edgetl.data.prepare` exactly:
the colour mode the image is converted to (PIL ``convert``, as edgetl's image-folder loader does), the scaling
to [0, 1], the channel conversion, the resize (torch ``F.interpolate`` with ``antialias=True,
align_corners=False`` for bilinear/bicubic, floor-index ``nearest``), no crop, mean/std, layout and dtype.

Example::

    preprocessing(art.input_spec)["resize"]   # {'method': 'bilinear', 'antialias': True, ...}
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, InputSpec

__all__ = ["history", "io_signature", "precision_of", "preprocessing", "versions"]

MANIFEST_SCHEMA = 1
_VERSIONED = ("edgetl", "numpy", "pillow", "torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch",
              "tensorrt")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def preprocessing(spec: InputSpec) -> dict[str, Any]:
    """What :func:`edgetl.data.prepare` does to an image for ``spec``, as data ``run.py`` executes."""
    src = spec.source_channels or spec.channels
    method = spec.resize if spec.resize in ("bilinear", "bicubic", "nearest") else "bilinear"
    conversion = ("none" if src == spec.channels else "repeat grey to every channel" if src == 1
                  else "mean of the channels")
    return {
        "color_mode": "L" if src == 1 else "RGB",
        "channel_order": "grey" if src == 1 else "RGB",
        "source_channels": src,
        "channels": spec.channels,
        "channel_conversion": conversion,
        "scale": "uint8 / 255 -> [0, 1]",
        "size": list(spec.resolution),
        "resize": {"method": method, "antialias": method != "nearest", "align_corners": False,
                   "when": "only if the image's size differs", "reference": "torch.nn.functional.interpolate"},
        "crop": None,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "layout": spec.layout,
        "dtype": spec.dtype,
        "reproduces": "edgetl.data.prepare",
    }


def io_signature(path: Path, fmt: Format, spec: InputSpec, num_outputs: int) -> dict[str, list[dict[str, Any]]]:
    """Input and output names, shapes (strings for dynamic dims) and dtypes, read from the file where possible."""
    try:
        if fmt in (Format.ONNX, Format.ORT):
            import onnxruntime as ort

            s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            conv = [{"name": t.name, "shape": list(t.shape), "dtype": _ORT_TYPES.get(t.type, t.type)}
                    for t in (*s.get_inputs(), *s.get_outputs())]
            n_in = len(s.get_inputs())
            return {"inputs": conv[:n_in], "outputs": conv[n_in:]}
        if fmt is Format.OPENVINO:
            import openvino as ov

            m = ov.Core().read_model(str(path))

            def one(t, i, kind):
                shape = [d.get_length() if d.is_static else "?" for d in t.get_partial_shape()]
                name = t.get_any_name() if t.get_names() else f"{kind}{i}"
                return {"name": name, "shape": shape, "dtype": t.get_element_type().to_dtype().name}

            return {"inputs": [one(t, i, "input") for i, t in enumerate(m.inputs)],
                    "outputs": [one(t, i, "output") for i, t in enumerate(m.outputs)]}
    except ImportError:
        pass
    return {"inputs": [{"name": "input", "shape": list(spec.batch_shape(1)), "dtype": spec.dtype}],
            "outputs": [{"name": "logits", "shape": [1, num_outputs], "dtype": "float32"}]}


def precision_of(art: Artifact) -> str:
    """fp32, fp16 or int8: what the shipped weights are, from the history or the graph."""
    for rec in reversed(art.history):
        p = rec.options.get("precision")
        if rec.stage == "quantize":
            return str(p or "int8")
        if p in ("fp16", "int8"):
            return str(p)
    if art.format is Format.ONNX and art.path is not None:
        from exporters.onnx import is_qdq

        if is_qdq(art.path):
            return "int8"
    return "fp32"


_KEEP = ("accuracy", "val_accuracy", "test_accuracy", "accuracy_before", "accuracy_after", "fp32_accuracy",
         "agreement", "ratio", "params", "params_before", "params_after", "flops", "flops_before", "flops_after",
         "size_bytes", "fp32_size_bytes", "epochs_run", "best_val_accuracy", "budget_met", "kept_float")


def history(art: Artifact) -> list[dict[str, Any]]:
    """Each stage that made the artifact, with the accuracy, fidelity and sizes it measured."""
    out = []
    for rec in art.history:
        metrics = {k: v for k, v in rec.metrics.items() if k in _KEEP and _plain(v)}
        parity = rec.metrics.get("parity")
        if isinstance(parity, dict) and parity.get("checked"):
            metrics["parity"] = {k: parity.get(k) for k in ("max_abs_error", "max_rel_error", "top1_agreement",
                                                            "samples", "runtime", "inputs")}
        options = {k: v for k, v in rec.options.items() if _plain(v)}
        out.append({"stage": rec.stage, "options": options, "metrics": metrics, "seconds": round(rec.seconds, 2),
                    "finished": rec.finished})
    return out


def _plain(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) <= 16 and all(isinstance(x, (str, int, float, bool)) for x in v)
    return v is None or isinstance(v, (str, int, float, bool))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
