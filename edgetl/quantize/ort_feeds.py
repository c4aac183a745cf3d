"""ONNX Runtime static int8 of a model of any inputs: the calibration reader yields real feeds by input name.

:func:`edgetl.quantize.onnxruntime.quantize_static_onnx` calibrates a single image input from one float32 batch;
here ``quantize_static`` gets a :class:`CalibrationDataReader` over the feeds of an
:class:`~edgetl.inputs.InputSet` (one sample per call, every input, any dtype: a sample rate stays int64), with the
same QDQ format, types, symmetric weights and range estimators (:func:`~edgetl.quantize.onnxruntime.
_calibration_options`), so both paths quantize alike.

Example::

    info = quantize_static_feeds(Path("vad.pre.onnx"), Path("vad.int8.onnx"), feeds, types=choose_ort_types())
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import ExportError

__all__ = ["feed_reader", "quantize_static_feeds"]


def feed_reader(feeds: Sequence[dict[str, np.ndarray]]):
    """ONNX Runtime's calibration reader over ``feeds`` (a list of ``{input name: array}``), rewindable."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self):
            if self._i >= len(feeds):
                return None
            self._i += 1
            return {k: np.asarray(v, order="C") for k, v in feeds[self._i - 1].items()}

        def rewind(self) -> None:
            self._i = 0

    return _Feeds()


def quantize_static_feeds(fp32: Path, out: Path, feeds: Sequence[dict[str, np.ndarray]] | None, *, types,
                          per_channel: bool = True, exclude: Sequence[str] = (), calibration: str = "mean-minmax",
                          cache: Path | None = None) -> dict[str, Any]:
    """Static int8 QDQ of ``fp32`` into ``out`` calibrated on ``feeds`` (None: the ranges in ``cache``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgetl.quantize.onnxruntime import _METHODS, _calibration_options, _first_line

    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    kw: dict[str, Any] = {"calibration_cache_path": str(cache)} if cache is not None else {}
    try:
        quantize_static(
            str(fp32), str(out), feed_reader(feeds) if feeds is not None else None,
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=types.reduce_range,
            activation_type=qtype[types.activation], weight_type=qtype[types.weight], nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, _METHODS[calibration]),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": types.activation == "s8",
                           **_calibration_options(calibration, types.activation == "s8")},
            **kw,
        )
    except Exception as e:  # noqa: BLE001 - ORT raises ValueError, RuntimeError and its own types
        raise ExportError(f"onnxruntime static quantization failed: {_first_line(e)}") from None
    return {"types": types.name, "per_channel": per_channel, "reduce_range": types.reduce_range, "format": "QDQ",
            "calibration": calibration, "calibration_feeds": len(feeds) if feeds is not None else "cached"}
