"""OpenVINO's performance counters: compiled with ``PERF_COUNT: YES``; ``request.get_profiling_info()`` after each
call (executed nodes' ``real_time``); the profiled total is the wall time of each profiled call. A fused node
(conv + BN + activation) is charged to its compute layer, found through the runtime model's original names.
"""

from __future__ import annotations

import re
import time
from typing import Any

from benchmarks.profilers.base import Profiled, per_run_ops, time_interleaved
from edgetl.artifact import Artifact
from edgetl.errors import MissingDependencyError

__all__ = ["profile"]

_COMPUTE = re.compile(r"conv|linear|gemm|matmul", re.IGNORECASE)

def profile(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> Profiled:
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "profiling OpenVINO models") from None
    core = ov.Core()
    model = core.read_model(str(artifact.path))
    if model.inputs[0].get_partial_shape().is_dynamic:
        model.reshape({model.inputs[0].any_name: list(x.shape)})
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg.update(INFERENCE_NUM_THREADS=int(threads), NUM_STREAMS="1")
    plain = core.compile_model(model, "CPU", cfg).create_infer_request()
    prof = core.compile_model(model, "CPU", {**cfg, "PERF_COUNT": "YES"}).create_infer_request()
    compiled = prof.get_compiled_model()
    origin = _ov_original_names(compiled)
    per_run: list[dict[str, float]] = []
    kinds: dict[str, str] = {}
    totals: list[float] = []

    def profiled():
        # The total is the call's wall time: OpenVINO's own request.latency came out *below* the sum of its
        # executed nodes' real_time on this machine (and above it on a busy one), so it bounds nothing.
        t0 = time.perf_counter_ns()
        prof.infer({0: x}, share_inputs=True)
        totals.append((time.perf_counter_ns() - t0) / 1e6)
        run: dict[str, float] = {}
        for p in prof.get_profiling_info():
            if str(p.status).rsplit(".", 1)[-1] == "EXECUTED":
                kinds[p.node_name] = p.node_type
                run[p.node_name] = run.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1000.0
        per_run.append(run)

    def module_of(name: str) -> str | None:
        # a fused node (conv + BN + activation) is charged to its compute layer: try those names first
        fused = sorted(origin.get(name, ()), key=lambda n: not _COMPUTE.search(n))
        for cand in (name, *fused):
            found = mapper.module(cand)
            if found:
                return found
        return None
    for _ in range(warmup):
        prof.infer({0: x}, share_inputs=True)
    p_plain, p_prof = time_interleaved(lambda: plain.infer({0: x}, share_inputs=True), profiled, calls=calls,
                                   rounds=rounds, warmup=warmup)
    ops, total = per_run_ops(per_run, totals, kinds, module_of)
    return ops, total, p_plain, p_prof, ov.get_version().split("-")[0]


def _ov_original_names(compiled) -> dict[str, list[str]]:
    """Executed node -> the original (ONNX or PyTorch-frontend) layers fused into it, from the runtime model."""
    out: dict[str, list[str]] = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "originalLayersNames" in info:
                names = [n for n in str(info["originalLayersNames"].astype(str)).split(",") if n]
                out[op.get_friendly_name()] = names
    except Exception:  # noqa: BLE001 - runtime-model introspection is best effort; names then map less often
        return out
    return out
