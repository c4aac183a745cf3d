"""OpenVINO runner. fp32 means fp32: the CPU plugin's bf16 default is overridden unless asked for.

Performance hint (``extra["hint"]``): ``latency`` (default), ``throughput``, or ``none`` (no hint: the
explicit ``threads`` and one stream rule, like ``benchmark_app -hint none -nthreads N -nstreams 1``).
"""

from __future__ import annotations

from collections import Counter

from edgetl.errors import ConfigError, InputFileError, MissingDependencyError
from edgetl.runtimes.base import Runtime

HINTS = ("latency", "throughput", "none")


class OpenVinoRunner(Runtime):
    runtime = "openvino"
    own_clock = True  # request.latency: the C++ side's latency, as benchmark_app reports it

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino", "openvino", "running OpenVINO IR") from None
        self._ov = ov
        core = ov.Core()
        hint = str(options.extra.get("hint", "latency")).lower()
        if hint not in HINTS:
            raise ConfigError(f"unknown OpenVINO performance hint {hint!r}; valid: {', '.join(HINTS)}")
        self.hint = hint
        config: dict = {"INFERENCE_PRECISION_HINT": options.precision or "f32"}
        if hint != "none":
            config["PERFORMANCE_HINT"] = hint.upper()
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        if options.threads or hint == "none":
            config["NUM_STREAMS"] = "1"
        try:
            model = core.read_model(str(artifact.path))
            want = options.extra.get("batch")
            # A classifier (input spec) runs at its spec's shape; a contract-only model keeps its partial shapes
            # (dynamic H x W survives) and is fed through run_named.
            if artifact.input_spec is not None and (want is not None or model.inputs[0].get_partial_shape().is_dynamic):
                model.reshape({model.inputs[0].any_name: list(artifact.input_spec.batch_shape(want or 1))})
            first = model.inputs[0].get_partial_shape()
            self.fixed_batch = int(first[0].get_length()) if first.rank.is_static and len(first) and \
                first[0].is_static else None
            self.compiled = core.compile_model(model, options.device.upper() if options.device else "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise InputFileError(f"{artifact.path}: OpenVINO cannot load it ({str(e).splitlines()[0][:300]})") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch):
        # share_inputs: the request reads the caller's array in place (the call is synchronous).
        res = self.request.infer({0: batch}, share_inputs=True)
        return next(iter(res.values()))

    def run_named(self, feed):
        """Inputs by name (a port's any name), every output by name; unnamed outputs are output0.. as
        :func:`edgetl.contract_read.read_openvino` names them."""
        from edgetl.errors import ConfigError

        ports = {}
        for i, p in enumerate(self.compiled.inputs):
            names = p.get_names()
            ports.update({n: i for n in names} if names else {("input" if len(self.compiled.inputs) == 1
                                                                  else f"input{i}"): i})
        unknown = [k for k in feed if k not in ports]
        if unknown or len(feed) != len(self.compiled.inputs):
            raise ConfigError(f"the model takes inputs {', '.join(sorted(ports))}; got {', '.join(sorted(feed))}")
        res = self.request.infer({ports[k]: v for k, v in feed.items()})
        outs = self.compiled.outputs
        named = {}
        for i, port in enumerate(outs):
            name = port.get_any_name() if port.get_names() else ("output" if len(outs) == 1 else f"output{i}")
            named[name] = res[port]
        return named

    @property
    def last_latency_ms(self) -> float:
        """The runtime's own latency of the last call (C++ side, as ``benchmark_app`` reports it)."""
        return float(self.request.latency)

    def execution_precisions(self) -> dict[str, int]:
        """How many executed primitives ran in each precision (e.g. {'f32': 40, 'u8': 60})."""
        counts: Counter = Counter()
        try:
            for op in self.compiled.get_runtime_model().get_ordered_ops():
                info = op.get_rt_info()
                if "runtimePrecision" in info:
                    p = info["runtimePrecision"]
                    counts[str(p.astype(str) if hasattr(p, "astype") else p).lower()] += 1
        except Exception:  # noqa: BLE001 - diagnostics only; older plugins lack the runtime model
            return {}
        counts.pop("undefined", None)
        return dict(counts)

    def describe(self):
        def prop(name):
            try:
                v = self.compiled.get_property(name)
                return v.to_string() if hasattr(v, "to_string") else str(v)  # ov.Type -> "f32"
            except Exception:  # noqa: BLE001 - not every plugin exposes every property
                return None

        return {"runtime": "openvino", "version": self._ov.get_version(), "threads": self.options.threads,
                "precision": prop("INFERENCE_PRECISION_HINT"), "hint": self.hint,
                "compiled_hint": prop("PERFORMANCE_HINT"), "streams": prop("NUM_STREAMS"),
                "compiled_threads": prop("INFERENCE_NUM_THREADS"), "device": self.options.device,
                "execution_precisions": self.execution_precisions()}
