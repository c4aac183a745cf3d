"""ExecuTorch: ETDump (``_load_for_executorch(enable_etdump=True)``) read with the devtools ``Inspector``; delegate
(XNNPACK) operators carry kernel names only: without an ETRecord they do not map to modules.
"""

from __future__ import annotations

import os
import tempfile

from benchmarks.profilers.base import OpTime, Profiled, time_interleaved
from edgetl.artifact import Artifact
from edgetl.errors import ConfigError, MissingDependencyError

__all__ = ["profile"]

def profile(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> Profiled:
    import torch

    try:
        import executorch.version
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        raise MissingDependencyError("executorch", "mobile", "profiling ExecuTorch programs") from None
    try:
        from executorch.devtools import Inspector
    except ImportError:
        raise MissingDependencyError("executorch devtools", "mobile", "reading ETDump profiles") from None
    t = (torch.from_numpy(x),)
    plain = portable_lib._load_for_executorch(str(artifact.path))
    prof = portable_lib._load_for_executorch(str(artifact.path), enable_etdump=True)
    if not hasattr(prof, "write_etdump_result_to_file"):
        raise ConfigError("ETDump profiling is not supported by this executorch build (no event tracer)")
    p_plain, p_prof = time_interleaved(lambda: plain.forward(t), lambda: prof.forward(t), calls=calls, rounds=rounds,
                                   warmup=warmup)
    if not prof.has_etdump():
        raise ConfigError("ETDump profiling is not supported by this executorch build (no ETDump recorded)")
    with tempfile.TemporaryDirectory(prefix="edgetl-etdump-") as tmp:
        path = os.path.join(tmp, "run.etdp")
        prof.write_etdump_result_to_file(path, os.path.join(tmp, "debug.bin"))
        inspector = Inspector(etdump_path=path)
    ops, total = [], 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for e in block.events:
            if e.perf_data is None:
                continue
            if e.name == "Method::execute":
                total = float(e.perf_data.avg)
            elif e.name != "DELEGATE_CALL":  # the delegate's range contains its operators
                ops.append(OpTime(e.name, e.delegate_backend_name or "portable", float(e.perf_data.avg), None))
    return ops, total, p_plain, p_prof, executorch.version.__version__
