"""One module per target format; see ``exporters.base`` for the format table.

Importing this package imports no backend (onnx, openvino, executorch, tensorrt load when a format is used).

Example::

    from exporters import ExportOptions, export
    onnx_art, ir_art = export(art, "onnx,openvino", "deploy/", options=ExportOptions(dynamic_batch=True))
"""

from exporters.base import FORMATS, ExportOptions, FormatSpec, Precision, check_request, export, plan_export

__all__ = ["FORMATS", "ExportOptions", "FormatSpec", "Precision", "check_request", "export", "plan_export"]
