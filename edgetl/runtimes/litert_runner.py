"""LiteRT (TensorFlow Lite) runner for ``.tflite`` files, where a LiteRT interpreter is installed.

Looks for ``ai_edge_litert`` (LiteRT), then ``tflite_runtime``, then ``tensorflow.lite``. Models converted
from PyTorch usually keep the NCHW input; an NHWC input is fed transposed.
"""

from __future__ import annotations

import importlib

import numpy as np

from edgetl.errors import InputFileError, MissingDependencyError
from edgetl.runtimes.base import Runtime

_INTERPRETERS = (("ai_edge_litert.interpreter", "Interpreter"), ("tflite_runtime.interpreter", "Interpreter"),
                 ("tensorflow.lite", "Interpreter"))


def _interpreter_class():
    for module, name in _INTERPRETERS:
        try:
            return getattr(importlib.import_module(module), name), module.split(".")[0]
        except ImportError:
            continue
    raise MissingDependencyError("ai-edge-litert", "mobile", "running .tflite models (pip install ai-edge-litert)")


class LiteRtRunner(Runtime):
    runtime = "litert"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        cls, self._package = _interpreter_class()
        try:
            self.interpreter = cls(model_path=str(artifact.path), num_threads=options.threads or None)
        except (ValueError, RuntimeError) as e:
            raise InputFileError(f"{artifact.path}: LiteRT cannot load it ({str(e).splitlines()[0][:300]})") from None
        inp = self.interpreter.get_input_details()[0]
        self._in, self._out = inp["index"], self.interpreter.get_output_details()[0]["index"]
        self._dtype = inp["dtype"]
        shape = tuple(int(s) for s in inp["shape"])
        c, h, w = artifact.input_spec.shape
        self._nhwc = len(shape) == 4 and shape[1:] == (h, w, c) and shape[1:] != (c, h, w)
        self._quant = inp.get("quantization", (0.0, 0))
        self.fixed_batch = shape[0] if len(shape) == 4 else None
        self.interpreter.allocate_tensors()

    def run(self, batch):
        x = np.transpose(batch, (0, 2, 3, 1)) if self._nhwc else batch
        if self._dtype != np.float32:
            scale, zero = self._quant
            x = np.round(x / scale + zero) if scale else x
            x = x.astype(self._dtype)
        self.interpreter.set_tensor(self._in, np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out).astype(np.float32, copy=False)

    def describe(self):
        try:
            from importlib.metadata import version

            v = version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(
                self._package, self._package))
        except Exception:  # noqa: BLE001
            v = None
        return {"runtime": "litert", "package": self._package, "version": v, "threads": self.options.threads,
                "precision": "int8" if self._dtype in (np.int8, np.uint8) else "as-stored",
                "layout": "NHWC" if self._nhwc else "NCHW"}
