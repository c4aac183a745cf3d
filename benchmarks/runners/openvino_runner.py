"""OpenVINO runner. fp32 means fp32: the CPU plugin's bf16 default is overridden unless asked for."""

from __future__ import annotations

from benchmarks.runners.base import Runner
from edgetl.errors import InputFileError, MissingDependencyError


class OpenVinoRunner(Runner):
    runtime = "openvino"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino", "openvino", "running OpenVINO IR") from None
        self._ov = ov
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": options.precision or "f32"}
        hint = options.extra.get("hint", "latency")
        if options.threads:
            # benchmark_app refuses -hint latency with -nthreads; the same pairing is used here.
            config.update({"PERFORMANCE_HINT": "LATENCY" if hint == "latency" else "THROUGHPUT"})
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
            config["NUM_STREAMS"] = "1"
        else:
            config["PERFORMANCE_HINT"] = "LATENCY" if hint == "latency" else "THROUGHPUT"
        try:
            model = core.read_model(str(artifact.path))
            want = options.extra.get("batch")
            if want is not None or model.inputs[0].get_partial_shape().is_dynamic:
                model.reshape({model.inputs[0].any_name: list(artifact.input_spec.batch_shape(want or 1))})
            self.fixed_batch = int(model.inputs[0].get_partial_shape()[0].get_length())
            self.compiled = core.compile_model(model, options.device.upper() if options.device else "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise InputFileError(f"{artifact.path}: OpenVINO cannot load it ({str(e).splitlines()[0][:300]})") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch):
        res = self.request.infer({0: batch})
        return next(iter(res.values()))

    def describe(self):
        return {"runtime": "openvino", "version": self._ov.get_version(), "threads": self.options.threads,
                "precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))}
