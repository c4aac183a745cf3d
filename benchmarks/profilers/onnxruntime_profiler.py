"""ONNX Runtime's own profiler: ``SessionOptions.enable_profiling``; the JSON trace's ``Node`` events
(``*_kernel_time``) per ``model_run``; the profiled total is the mean ``model_run`` duration.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks.profilers.base import Profiled, per_run_ops, time_interleaved
from edgetl.artifact import Artifact
from edgetl.errors import MissingDependencyError, ModelError

__all__ = ["profile"]

def profile(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> Profiled:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "profiling ONNX models") from None

    def session(profiling: bool, prefix: str):
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profiling:
            so.enable_profiling = True
            so.profile_file_prefix = prefix
        return ort.InferenceSession(str(artifact.path), sess_options=so, providers=["CPUExecutionProvider"])

    with tempfile.TemporaryDirectory(prefix="edgetl-ortprof-") as tmp:
        plain = session(False, "")
        prof = session(True, os.path.join(tmp, "ort"))
        name = plain.get_inputs()[0].name
        feed = {name: x}
        for _ in range(warmup):
            prof.run(None, feed)
        p_plain, p_prof = time_interleaved(lambda: plain.run(None, feed), lambda: prof.run(None, feed),
                                       calls=calls, rounds=rounds, warmup=warmup)
        trace = json.loads(Path(prof.end_profiling()).read_text())
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warmup:]  # drop the warm-up runs
    if not runs:
        raise ModelError("ONNX Runtime's profile holds no model_run events")
    per_run: list[dict[str, float]] = [{} for _ in runs]
    kinds: dict[str, str] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = next((j for j, r in enumerate(runs) if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]), None)
        if i is None:
            continue
        op = e["name"][: -len("_kernel_time")]
        kinds[op] = e.get("args", {}).get("op_name", "")
        per_run[i][op] = per_run[i].get(op, 0.0) + e["dur"] / 1000.0
    ops, total = per_run_ops(per_run, [r["dur"] / 1000.0 for r in runs], kinds, mapper.module)
    return ops, total, p_plain, p_prof, ort.__version__
