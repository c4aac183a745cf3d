"""ONNX Runtime runner (``.onnx`` and ``.ort``), CPU execution provider unless told otherwise."""

from __future__ import annotations

from edgetl.errors import ConfigError, InputFileError, MissingDependencyError
from edgetl.runtimes.base import Runtime


class OnnxRuntimeRunner(Runtime):
    runtime = "onnxruntime"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", "onnx", "running ONNX models") from None
        self._ort = ort
        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        # Spinning threads keep burning CPU after run() returns and slow whatever is timed next.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if options.extra.get("no_spin", True) else "1")
        level = options.extra.get("graph_optimization", "all")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if level not in levels:
            raise ConfigError(f"unknown ONNX Runtime graph optimization level {level!r}; valid: {', '.join(levels)}")
        so.graph_optimization_level = levels[level]
        providers = list(options.extra.get("providers") or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ConfigError(f"ONNX Runtime here has no {', '.join(missing)}; available: "
                              f"{', '.join(ort.get_available_providers())}")
        try:
            self.session = ort.InferenceSession(str(artifact.path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise InputFileError(f"{artifact.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:300]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def run(self, batch):
        return self.session.run(None, {self.input_name: batch})[0]

    def run_named(self, feed):
        want = {i.name for i in self.session.get_inputs()}
        if set(feed) != want:
            from edgetl.errors import ConfigError

            raise ConfigError(f"the model takes inputs {', '.join(sorted(want))}; got {', '.join(sorted(feed))}")
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed)), strict=True))

    def describe(self):
        return {"runtime": "onnxruntime", "version": self._ort.__version__, "threads": self.options.threads,
                "providers": self.session.get_providers(), "precision": "as-stored",
                "spinning": self.options.extra.get("no_spin", True) is False}
