"""Timing one-layer graphs and whole models on a runtime: the measurements behind the latency table.

Each layer is rebuilt alone (ONNX graph for ONNX Runtime and OpenVINO, fp32 or the int8 QDQ pattern; a module
for PyTorch) with its own kernel, stride, padding and input size, compiled as the runtime compiles a model,
and timed with ``perf_counter_ns`` in interleaved rounds.

Example::

    backend = Backend("openvino", threads=2, precision="fp32")
    [ms] = time_interleaved([backend.layer(sig, 32, 64)], TimingConfig())
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.errors import MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.latency_table import LayerSignature, TimingConfig

__all__ = ["Backend", "time_interleaved"]


def _onnx_layer(sig: LayerSignature, c_in: int, c_out: int, *, int8: bool = False) -> bytes:
    """One layer as an ONNX graph; ``int8``: the QDQ pattern int8 deployments run (u8 activations in and out,
    s8 per-channel weights), which OpenVINO turns into FakeQuantize + int8 kernels and ONNX Runtime into
    QLinearConv / QGemm."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if sig.kind == "linear":
        x_shape, w_shape, groups = [1, c_in], (c_out, c_in), 1
    else:
        groups = c_out if sig.kind == "dwconv" else sig.groups
        c_in = c_out if sig.kind == "dwconv" else c_in
        x_shape, w_shape = [1, c_in, *sig.in_hw], (c_out, c_in // groups, *sig.kernel)
    w_float = (rng.standard_normal(w_shape) * 0.05).astype(np.float32)
    inits = [numpy_helper.from_array(np.zeros(c_out, np.float32), "b")]
    nodes = []
    x_in, w_in = "x", "w"
    if int8:
        w_scale = (np.abs(w_float).reshape(c_out, -1).max(1) / 127.0).astype(np.float32)
        w_q = np.clip(np.round(w_float / w_scale.reshape(-1, *[1] * (len(w_shape) - 1))), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "wq"), numpy_helper.from_array(w_scale, "ws"),
                  numpy_helper.from_array(np.zeros(c_out, np.int8), "wz"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                  numpy_helper.from_array(np.array(128, np.uint8), "xz")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0)]
        x_in, w_in = "xd", "wd"
    else:
        inits.append(numpy_helper.from_array(w_float, "w"))
    out = "yf" if int8 else "y"
    if sig.kind == "linear":
        nodes.append(helper.make_node("Gemm", [x_in, w_in, "b"], [out], transB=1))
    else:
        nodes.append(helper.make_node("Conv", [x_in, w_in, "b"], [out], kernel_shape=list(sig.kernel),
                                      strides=list(sig.stride), pads=list(sig.pads), dilations=list(sig.dilation),
                                      group=groups))
    if int8:  # the output requantized, as the next int8 layer reads it
        nodes += [helper.make_node("QuantizeLinear", ["yf", "xs", "xz"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "xs", "xz"], ["y"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _torch_layer(sig: LayerSignature, c_in: int, c_out: int):
    import torch
    import torch.nn as nn

    if sig.kind == "linear":
        return nn.Linear(c_in, c_out).eval(), torch.randn(1, c_in)
    groups = c_out if sig.kind == "dwconv" else sig.groups
    c_in = c_out if sig.kind == "dwconv" else c_in
    pads = sig.pads
    conv = nn.Conv2d(c_in, c_out, sig.kernel, stride=sig.stride, dilation=sig.dilation, groups=groups)
    pad = nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2]))
    return nn.Sequential(pad, conv).eval(), torch.randn(1, c_in, *sig.in_hw)


class Backend:
    """Compiles one-layer graphs and whole models for one runtime; returns zero-argument callables."""

    def __init__(self, runtime: str, threads: int | None, precision: str) -> None:
        self.runtime, self.threads, self.precision = runtime, threads, precision
        try:
            if runtime == "onnxruntime":
                import onnxruntime as ort

                self.version = ort.__version__
                self._ort = ort
            elif runtime == "openvino":
                import openvino as ov

                self.version = ov.get_version().split("-")[0]
                self._core = ov.Core()
            else:
                import torch

                self.version = torch.__version__
        except ImportError:
            extra = {"onnxruntime": "onnx", "openvino": "openvino"}.get(runtime, "")
            raise MissingDependencyError(runtime, extra, "building a latency table") from None

    @contextlib.contextmanager
    def torch_settings(self):
        """PyTorch timings at the asked threads (restored after) with denormals flushed, as runtimes do."""
        import torch

        threads = torch.get_num_threads()
        torch.set_flush_denormal(True)  # process-wide, as the CLI and the torch runner set it
        if self.threads and self.runtime == "torch":
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _ort_session(self, model: bytes | str):
        so = self._ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = self._ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        return sess

    def _ov_compile(self, model):
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
            cfg["NUM_STREAMS"] = "1"
        return self._core.compile_model(model, "CPU", cfg).create_infer_request()

    def layer(self, sig: LayerSignature, c_in: int, c_out: int) -> Callable[[], Any]:
        import numpy as np

        shape = [1, c_in] if sig.kind == "linear" else [1, c_out if sig.kind == "dwconv" else c_in, *sig.in_hw]
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        if self.runtime == "onnxruntime":
            sess = self._ort_session(_onnx_layer(sig, c_in, c_out, int8=self.precision == "int8"))
            return lambda: sess.run(None, {"x": x})
        if self.runtime == "openvino":
            req = self._ov_compile(self._core.read_model(_onnx_layer(sig, c_in, c_out,
                                                                     int8=self.precision == "int8"), b""))
            return lambda: req.infer({0: x}, share_inputs=True)
        import torch

        mod, t = _torch_layer(sig, c_in, c_out)

        def run():
            with torch.inference_mode():
                mod(t)
        return run

    def model(self, model, input_shape) -> Callable[[], Any]:
        import numpy as np
        import torch

        x = np.random.default_rng(1).standard_normal((1, *input_shape)).astype(np.float32)
        if self.runtime == "torch":
            t = torch.from_numpy(x)

            def run():
                with torch.inference_mode():
                    model(t)
            return run
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "model.onnx"
            torch.onnx.export(model.eval(), (torch.from_numpy(x),), str(f), dynamo=False, input_names=["x"],
                              opset_version=17)
            if self.runtime == "onnxruntime":
                sess = self._ort_session(str(f))
                return lambda: sess.run(None, {"x": x})
            req = self._ov_compile(self._core.read_model(str(f)))
        return lambda: req.infer({0: x}, share_inputs=True)


def time_interleaved(fns: Sequence[Callable[[], Any]], timing: TimingConfig) -> list[float]:
    """Median ms per callable, timed in interleaved rounds so drift hits every width alike."""
    for fn in fns:
        for _ in range(timing.warmup):
            fn()
    samples: list[list[int]] = [[] for _ in fns]
    for _ in range(timing.rounds):
        for i, fn in enumerate(fns):
            for _ in range(timing.calls):
                a = time.perf_counter_ns()
                fn()
                samples[i].append(time.perf_counter_ns() - a)
    out = []
    for s in samples:
        s.sort()
        out.append(s[len(s) // 2] / 1e6)
    return out


