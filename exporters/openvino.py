"""OpenVINO IR export (``.xml`` + ``.bin``) from a PyTorch model or an ONNX file.

Two defaults differ from OpenVINO's own, on purpose: ``save_model`` compresses weights to fp16 unless told not
to, so fp32 here passes ``compress_to_fp16=False`` (fp16 is asked for with ``--precision fp16``); and the input
shape is made static (batch 1, or the model's C x H x W with a dynamic batch only when ``--dynamic-batch``), so
``benchmark_app -m model.xml`` runs it without ``-shape`` and the plugin can plan memory once.

For the quantization stage, :func:`export_openvino` is the one function to call (it takes a PyTorch or an ONNX
artifact, e.g. NNCF's output saved as ONNX, or an in-memory ``ov.Model`` via ``ov_model=``).

Example::

    ir = export_openvino(art, Path("out/model.xml"))            # fp32 weights, static [1, C, H, W]
    ir16 = export_openvino(onnx_art, Path("out/m16.xml"), compress_to_fp16=True)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ExportError, MissingDependencyError

__all__ = ["export_openvino", "exporter"]

log = logging.getLogger(__name__)


def exporter(artifact: Artifact, out: Path, options) -> Artifact:
    """The format-table entry point (see :mod:`exporters.base`)."""
    from exporters.base import Precision

    fp16 = options.precision is Precision.FP16
    return export_openvino(artifact, out, compress_to_fp16=fp16, dynamic_batch=options.dynamic_batch)


def export_openvino(
    artifact: Artifact,
    path: str | Path,
    *,
    compress_to_fp16: bool = False,
    dynamic_batch: bool = False,
    ov_model: Any = None,
) -> Artifact:
    """Convert a PyTorch or ONNX artifact (or ``ov_model``, already converted) to IR at ``path`` (atomic).

    ``path`` names the ``.xml``; the ``.bin`` is written beside it. Returns the IR artifact; no sidecar is
    written here (:func:`exporters.base.write_metadata` does that once the export is final).
    """
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "OpenVINO export") from None
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"an OpenVINO IR path must end in .xml, got {path.name}")
    start = time.perf_counter()
    if artifact.input_spec is None and artifact.contract is not None:
        return _export_by_contract(ov, artifact, path, compress_to_fp16=compress_to_fp16, ov_model=ov_model,
                                   start=start)
    batch = -1 if dynamic_batch else 1
    shape = [batch, *artifact.input_spec.shape]
    if ov_model is None:
        ov_model = _convert(ov, artifact, shape)
    try:
        ov_model.reshape({ov_model.inputs[0]: ov.PartialShape(shape)})
    except Exception as e:  # noqa: BLE001 - some graphs hard-code their batch
        raise ExportError(f"OpenVINO cannot reshape the model input to {shape}: {_first_line(e)}") from None
    _name_io(ov_model)
    ov_model.set_rt_info(json.dumps(artifact.metadata(), default=str), ["edgetl", "source"])
    _save_atomic(ov, ov_model, path, compress_to_fp16)
    precision = "fp16" if compress_to_fp16 else "fp32"
    record = StageRecord(
        stage="export",
        options={"format": "openvino", "precision": precision, "dynamic_batch": bool(dynamic_batch),
                 "compress_to_fp16": bool(compress_to_fp16)},
        seconds=time.perf_counter() - start,
    )
    extra = {"precision": precision, "dynamic_batch": bool(dynamic_batch), "openvino": ov.get_version(),
             "input_shape": ["?" if s < 0 else s for s in shape]}
    return artifact.with_stage(record, path=path, format=Format.OPENVINO, extra=extra)


def _convert(ov, artifact: Artifact, shape: list[int]):
    if artifact.format is Format.ONNX and artifact.path is not None:
        source: Any = str(artifact.path)
        kw: dict[str, Any] = {}
    elif artifact.format is Format.TORCH and artifact.model is not None:
        import torch

        source = artifact.model.eval()
        g = torch.Generator().manual_seed(0)
        kw = {"example_input": torch.randn(artifact.input_spec.batch_shape(1), generator=g)}
    else:
        raise ExportError(f"OpenVINO export takes a PyTorch or ONNX artifact, not {artifact.format.value}")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its PyTorch frontend traces with torch.jit
            return ov.convert_model(source, input=[ov.PartialShape(shape)], **kw)
    except Exception as e:  # noqa: BLE001 - the frontends raise their own types
        op = _op_from_message(str(e))
        raise ExportError(
            f"OpenVINO could not convert the model{f' (operation {op})' if op else ''}: {_first_line(e)}"
        ) from None


def _export_by_contract(ov, artifact: Artifact, path: Path, *, compress_to_fp16: bool, ov_model: Any,
                        start: float) -> Artifact:
    """Any model by its contract: inputs keep their names and partial shapes (a dynamic H x W survives, bounded
    by --min-shape/--max-shape where given), the example inputs come from the contract, and the IR records the
    contract (roles, layouts, task) in its rt_info."""
    import dataclasses

    from edgetl.contract_read import embed_openvino, read_openvino
    from edgetl.contract_shapes import example_inputs, openvino_partial_shapes

    contract = artifact.contract
    partial = openvino_partial_shapes(contract)
    if ov_model is None:
        if artifact.format is Format.ONNX and artifact.path is not None:
            source: Any = str(artifact.path)
            kw: dict[str, Any] = {}
        elif artifact.format is Format.TORCH and artifact.model is not None:
            import torch

            source = artifact.model.eval()
            feed = example_inputs(contract)
            kw = {"example_input": tuple(torch.from_numpy(feed[n]) for n in contract.input_names),
                  "input": [ov.PartialShape(partial[n]) for n in contract.input_names]}
        else:
            raise ExportError(f"OpenVINO export takes a PyTorch or ONNX artifact, not {artifact.format.value}")
        try:
            ov_model = ov.convert_model(source, **kw)
        except Exception as e:  # noqa: BLE001 - the frontends raise their own types
            raise ExportError(f"OpenVINO could not convert the model: {_first_line(e)}") from None
    for port, name in zip(ov_model.inputs, contract.input_names, strict=True):
        if name not in port.get_names():
            port.get_tensor().set_names(set(port.get_names()) | {name})
    for port, o in zip(ov_model.outputs, contract.outputs, strict=False):
        if not port.get_names():
            port.get_tensor().set_names({o.name})
    try:
        ov_model.reshape({n: ov.PartialShape(partial[n]) for n in contract.input_names})
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"OpenVINO cannot give the inputs the contract's shapes {partial}: {_first_line(e)}") from None
    got = read_openvino(ov_model)
    outs = tuple(dataclasses.replace(o, role=s.role, layout=s.layout, box_format=s.box_format)
                 for o, s in zip(got.outputs, contract.outputs, strict=False)) + got.outputs[len(contract.outputs):]
    ins = tuple(dataclasses.replace(t, value_range=s.value_range, mean=s.mean, std=s.std, layout=s.layout,
                                    opt_shape=s.opt_shape) for t, s in zip(got.inputs, contract.inputs, strict=True))
    recorded = dataclasses.replace(got, inputs=ins, outputs=outs, task=contract.task)
    embed_openvino(ov_model, recorded)
    ov_model.set_rt_info(json.dumps(artifact.metadata(), default=str), ["edgetl", "source"])
    _save_atomic(ov, ov_model, path, compress_to_fp16)
    precision = "fp16" if compress_to_fp16 else "fp32"
    record = StageRecord(stage="export", options={"format": "openvino", "precision": precision,
                                                  "compress_to_fp16": bool(compress_to_fp16), "by_contract": True},
                         seconds=time.perf_counter() - start)
    extra = {"precision": precision, "openvino": ov.get_version(), "input_shapes": partial}
    return artifact.with_stage(record, path=path, format=Format.OPENVINO, extra=extra, contract=recorded)


def _name_io(model) -> None:
    """Stable tensor names (``input`` / ``logits``) whatever the frontend chose, as the ONNX export uses."""
    for port, name in ((model.inputs[0], "input"), (model.outputs[0], "logits")):
        names = set(port.get_names())
        if name not in names:
            port.get_tensor().set_names(names | {name})


def _save_atomic(ov, model, path: Path, compress_to_fp16: bool) -> None:
    """``save_model`` writes two files; write both under temporary names, then rename .bin before .xml."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".openvino-export.", dir=path.parent) as scratch:
        tmp_xml = Path(scratch) / path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)


def _op_from_message(text: str) -> str | None:
    import re

    m = re.search(r"(aten::\w+|prim::\w+|OpType[:=]\s*\w+|operation[s]?:?\s*'?[\w:]+)", text)
    return m.group(1) if m else None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
