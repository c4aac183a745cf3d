"""Exports made in the benchmark tests with the raw APIs (``torch.onnx.export``, ``openvino.convert_model``).

Kept apart from the exporters package so the harness tests depend only on the runtimes themselves.
"""

from __future__ import annotations

import json
from pathlib import Path


def _sidecar(art, path: Path, fmt: str) -> None:
    from edgetl.models import SIDECAR_SUFFIX

    path.with_name(path.name + SIDECAR_SUFFIX).write_text(json.dumps({**art.metadata(), "format": fmt}, default=str))


def export_onnx(art, folder: Path) -> Path:
    """``torch.onnx.export`` (legacy exporter), dynamic batch, with the edgetl sidecar."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lite0_digits.onnx"
    x = torch.zeros(art.input_spec.batch_shape(1))
    torch.onnx.export(art.model.eval(), (x,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17)
    _sidecar(art, path, "onnx")
    return path


def export_openvino(art, folder: Path) -> Path:
    """``openvino.convert_model`` from the module, reshaped static, weights kept fp32."""
    import openvino as ov
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lite0_digits.xml"
    m = ov.convert_model(art.model.eval(), example_input=torch.zeros(art.input_spec.batch_shape(1)))
    m.reshape({m.inputs[0].any_name: list(art.input_spec.batch_shape(1))})
    ov.save_model(m, str(path), compress_to_fp16=False)
    _sidecar(art, path, "openvino")
    return path
