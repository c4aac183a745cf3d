"""One runner per runtime behind one interface, registered lazily by format.

A runner loads an artifact, runs a float32 NCHW numpy batch and returns the logits as numpy; ``synchronize``
waits for queued device work (a no-op on CPU runtimes). Importing this package imports no runtime.

Example::

    with open_runner(artifact, threads=2) as r:
        logits = r.run(batch)
"""

from __future__ import annotations

import importlib

from benchmarks.runners.base import Runner, RunnerOptions
from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError, UnknownNameError

__all__ = ["RUNNERS", "Runner", "RunnerOptions", "open_runner", "runner_for"]

# runtime name -> (module, class, formats it runs)
RUNNERS: dict[str, tuple[str, str, tuple[Format, ...]]] = {
    "torch": ("benchmarks.runners.torch_runner", "TorchRunner", (Format.TORCH,)),
    "onnxruntime": ("benchmarks.runners.onnxruntime_runner", "OnnxRuntimeRunner", (Format.ONNX, Format.ORT)),
    "openvino": ("benchmarks.runners.openvino_runner", "OpenVinoRunner", (Format.OPENVINO, Format.ONNX)),
    "litert": ("benchmarks.runners.litert_runner", "LiteRtRunner", (Format.TFLITE,)),
    "tensorrt": ("benchmarks.runners.tensorrt_runner", "TensorRtRunner", (Format.TENSORRT,)),
    "executorch": ("benchmarks.runners.executorch_runner", "ExecuTorchRunner", (Format.EXECUTORCH,)),
}

DEFAULT_RUNTIME: dict[Format, str] = {
    Format.TORCH: "torch",
    Format.ONNX: "onnxruntime",
    Format.ORT: "onnxruntime",
    Format.OPENVINO: "openvino",
    Format.TFLITE: "litert",
    Format.TENSORRT: "tensorrt",
    Format.EXECUTORCH: "executorch",
}


def runner_for(fmt: Format, runtime: str | None = None) -> str:
    """The runtime that runs ``fmt`` (the given one if it can, else the default)."""
    if runtime is not None:
        if runtime not in RUNNERS:
            raise UnknownNameError("runtime", runtime, RUNNERS)
        if fmt not in RUNNERS[runtime][2]:
            raise ConfigError(f"runtime {runtime!r} cannot run {fmt.value} artifacts; it runs "
                              f"{', '.join(f.value for f in RUNNERS[runtime][2])}")
        return runtime
    if fmt not in DEFAULT_RUNTIME:
        raise ConfigError(f"no runtime here runs {fmt.value} artifacts; runnable formats: "
                          f"{', '.join(f.value for f in DEFAULT_RUNTIME)}")
    return DEFAULT_RUNTIME[fmt]


def open_runner(artifact: Artifact, *, runtime: str | None = None, options: RunnerOptions | None = None,
                **kw) -> Runner:
    """Load ``artifact`` in its runtime. Keyword arguments are :class:`RunnerOptions` fields."""
    name = runner_for(artifact.format, runtime)
    module, cls, _ = RUNNERS[name]
    opts = options or RunnerOptions(**kw)
    return getattr(importlib.import_module(module), cls)(artifact, opts)
