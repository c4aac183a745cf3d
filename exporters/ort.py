"""ONNX Runtime's ORT format (``.ort``), for mobile and minimal ORT builds, via ``convert_onnx_models_to_ort``.

The "Fixed" optimization style is used (optimizations applied once, at conversion) without the x86-only NCHWc
layout transformer, so the file runs on ARM phones as well as here; the tool also writes the
``required_operators`` config a reduced-size ORT build needs, kept beside the model.

Example::

    ort_art = export_ort(onnx_art, Path("out/model.ort"))
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ExportError, MissingDependencyError

__all__ = ["export_ort", "exporter"]

log = logging.getLogger(__name__)


def exporter(artifact: Artifact, out: Path, options) -> Artifact:
    """The format-table entry point; a PyTorch source arrives here already exported to ONNX."""
    return export_ort(artifact, out)


def export_ort(artifact: Artifact, path: str | Path) -> Artifact:
    """Convert an ONNX artifact to ``path`` (``.ort``) plus ``path.required_operators.config``; atomic."""
    try:
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "ORT-format export") from None
    if artifact.format is not Format.ONNX or artifact.path is None:
        raise ExportError(f"ORT-format export converts an ONNX file, not a {artifact.format.value} artifact")
    path = Path(path)
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ort-export.", dir=path.parent) as scratch:
        scratch = Path(scratch)
        src = scratch / "in" / f"{path.stem}.onnx"
        src.parent.mkdir()
        shutil.copyfile(artifact.path, src)
        out_dir = scratch / "out"
        log_out = io.StringIO()
        try:
            # The tool prints progress on stdout; --json needs stdout clean.
            tool_log = logging.getLogger("ort_format_model.utils")  # logs each file it writes at INFO, own level
            level = tool_log.level
            tool_log.setLevel(logging.WARNING)
            try:
                with contextlib.redirect_stdout(log_out):
                    convert_onnx_models_to_ort(src, output_dir=out_dir,
                                               optimization_styles=[OptimizationStyle.Fixed], target_platform="arm")
            finally:
                tool_log.setLevel(level)
        except Exception as e:  # noqa: BLE001 - the tool raises plain exceptions
            raise ExportError(f"ORT-format conversion failed: {str(e).strip().splitlines()[0][:300]}") from None
        log.debug("convert_onnx_models_to_ort: %s", log_out.getvalue())
        made = out_dir / f"{path.stem}.ort"
        if not made.exists():
            raise ExportError(f"ORT-format conversion produced no {made.name}: {log_out.getvalue()[-300:]}")
        config = next(out_dir.glob("*.config"), None)
        if config is not None:
            os.replace(config, path.with_name(path.name + ".required_operators.config"))
        os.replace(made, path)
    import onnxruntime

    record = StageRecord(stage="export",
                         options={"format": "ort", "precision": "fp32", "optimization_style": "Fixed",
                                  "target_platform": "arm"},
                         seconds=time.perf_counter() - start)
    return artifact.with_stage(record, path=path, format=Format.ORT,
                               extra={"onnxruntime": onnxruntime.__version__, "ort_optimization_style": "Fixed"})
