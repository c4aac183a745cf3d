"""Post-training quantization per backend (ONNX Runtime, OpenVINO/NNCF, TensorRT Q/DQ), accuracy-checked.

Example::

    from edgetl.quantize import QuantizeConfig, quantize
    q = quantize(load_model("teacher.pt"), QuantizeConfig(backend="onnxruntime", max_drop=1.0),
                 data=load_data("mnist5k"), ctx=StageContext(output=Path("teacher.int8.onnx")))
    q.history[-1].metrics["accuracy"], q.history[-1].metrics["kept_float"]
"""

from edgetl.quantize.calibration import CalibrationSet, select_calibration
from edgetl.quantize.config import (
    Backend,
    CalibrationMethod,
    OrtMode,
    OrtTypes,
    Preset,
    QuantizeConfig,
    QuantPrecision,
)
from edgetl.quantize.quantizer import default_suffix, quantize

__all__ = [
    "Backend",
    "CalibrationMethod",
    "CalibrationSet",
    "OrtMode",
    "OrtTypes",
    "Preset",
    "QuantPrecision",
    "QuantizeConfig",
    "default_suffix",
    "quantize",
    "select_calibration",
]
