"""One runtime per backend behind one interface (:class:`Runtime`), registered lazily by name.

A runtime loads an artifact, runs a float32 NCHW numpy batch and returns the logits as numpy; ``synchronize``
waits for queued device work (a no-op on CPU runtimes). Importing this package imports no runtime backend.
Evaluation, the parity check, quantization's accuracy check and the latency harness all run models through it.

The built-in runtimes are the rows of :data:`RUNTIMES`; other packages add theirs through the ``edgetl.runtimes``
entry point group (see :mod:`edgetl.registry`).

Example::

    with open_runtime(artifact, threads=2) as r:
        logits = r.run(batch)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError
from edgetl.runtimes.base import Runner, RunnerOptions, Runtime, RuntimeOptions

__all__ = ["RUNTIMES", "Runner", "RunnerOptions", "Runtime", "RuntimeOptions", "RuntimeSpec", "open_runner",
           "open_runtime", "runner_for", "runtime_formats"]


@dataclass(frozen=True)
class RuntimeSpec:
    """One row of the runtime table: the class (as ``module:Class``, imported when used) and what it runs."""

    name: str
    entry: str
    formats: tuple[Format, ...]
    extra: str | None = None  # pip install 'edgetl[EXTRA]' brings its backend
    description: str = ""


RUNTIMES: dict[str, RuntimeSpec] = {s.name: s for s in (
    RuntimeSpec("torch", "edgetl.runtimes.torch_runner:TorchRunner", (Format.TORCH,), None,
                "PyTorch eager, or torch.compile"),
    RuntimeSpec("onnxruntime", "edgetl.runtimes.onnxruntime_runner:OnnxRuntimeRunner", (Format.ONNX, Format.ORT),
                "onnx", "ONNX Runtime (CPU execution provider unless told otherwise)"),
    RuntimeSpec("openvino", "edgetl.runtimes.openvino_runner:OpenVinoRunner", (Format.OPENVINO, Format.ONNX),
                "openvino", "OpenVINO, true fp32 unless a precision hint is given"),
    RuntimeSpec("litert", "edgetl.runtimes.litert_runner:LiteRtRunner", (Format.TFLITE,), "mobile",
                "LiteRT / TensorFlow Lite interpreter"),
    RuntimeSpec("tensorrt", "edgetl.runtimes.tensorrt_runner:TensorRtRunner", (Format.TENSORRT,), "tensorrt",
                "TensorRT 10 engines on an NVIDIA GPU"),
    RuntimeSpec("executorch", "edgetl.runtimes.executorch_runner:ExecuTorchRunner", (Format.EXECUTORCH,), "mobile",
                "ExecuTorch runtime (XNNPACK delegate)"),
)}


def runtime_formats(name: str) -> tuple[Format, ...]:
    """The artifact formats runtime ``name`` runs (built-in or plug-in)."""
    from edgetl.registry import runtimes

    entry = runtimes().get(name)
    if entry.builtin:
        return RUNTIMES[entry.name].formats
    return tuple(Format.parse(f) for f in runtimes().load(entry.name).formats)


def runner_for(fmt: Format, runtime: str | None = None) -> str:
    """The runtime that runs ``fmt`` (the given one if it can, else the format's default)."""
    from edgetl.formats import format_info

    if runtime is not None:
        formats = runtime_formats(runtime)
        if fmt not in formats:
            raise ConfigError(f"runtime {runtime!r} cannot run {fmt.value} artifacts; it runs "
                              f"{', '.join(f.value for f in formats) or 'nothing'}")
        return runtime
    default = format_info(fmt).runtime
    if default is None:
        from edgetl.formats import FORMAT_INFO

        raise ConfigError(f"no runtime here runs {fmt.value} artifacts; runnable formats: "
                          f"{', '.join(f.value for f, i in FORMAT_INFO.items() if i.runtime)}")
    return default


def open_runtime(artifact: Artifact, *, runtime: str | None = None, options: RuntimeOptions | None = None,
                 **kw) -> Runtime:
    """Load ``artifact`` in its runtime. Keyword arguments are :class:`RuntimeOptions` fields."""
    from edgetl.registry import runtimes

    name = runner_for(artifact.format, runtime)
    cls = runtimes().load(name)
    return cls(artifact, options or RuntimeOptions(**kw))


open_runner = open_runtime  # the name it had in benchmarks.runners
