"""edgetl: compress a fine-tuned PyTorch model for an edge device.

Stages take and return an :class:`Artifact`: ``stage(artifact, config, *, data=None) -> Artifact``.
Importing edgetl imports no runtime backend (ONNX Runtime, OpenVINO, TensorRT, ExecuTorch); those load
when a stage or runner needs them.

Example::

    import edgetl
    data = edgetl.load_data("mnist5k")
    teacher = edgetl.finetune("efficientnet_lite0", data)
    edgetl.save_model(teacher, "teacher.pt")
"""

from edgetl.artifact import Artifact, Format, InputSpec, StageRecord
from edgetl.data import DataSplits, load_data
from edgetl.errors import (
    BudgetError,
    ConfigError,
    DataError,
    EdgetlError,
    ExportError,
    InputFileError,
    MissingDependencyError,
    ModelError,
    ParityError,
    UnknownNameError,
    UnsafeCheckpointError,
)
from edgetl.evaluate import evaluate
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.models import build_arch, list_archs, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "BudgetError",
    "ConfigError",
    "DataError",
    "DataSplits",
    "EdgetlError",
    "ExportError",
    "FinetuneConfig",
    "Format",
    "InputFileError",
    "InputSpec",
    "MissingDependencyError",
    "ModelError",
    "ParityError",
    "StageRecord",
    "UnknownNameError",
    "UnsafeCheckpointError",
    "build_arch",
    "evaluate",
    "finetune",
    "list_archs",
    "load_data",
    "load_model",
    "save_model",
]
