"""Per-layer (per-operator) latency from each runtime's own profiler, mapped back to PyTorch modules.

- ONNX Runtime: ``SessionOptions.enable_profiling``; the JSON trace's ``Node`` events (``*_kernel_time``) per
  ``model_run``; the profiled total is the mean ``model_run`` duration.
- OpenVINO: compiled with ``PERF_COUNT: YES``; ``request.get_profiling_info()`` after each call (executed nodes'
  ``real_time``); the profiled total is the wall time of each profiled call.
- PyTorch (eager ``.pt``): ``torch.profiler`` with one ``record_function`` per module (forward hooks); each
  top-level aten op is charged to the innermost module it ran in; the total is the whole forward's range.
- ExecuTorch: ETDump (``_load_for_executorch(enable_etdump=True)``) read with the devtools ``Inspector``;
  delegate (XNNPACK) operators carry kernel names only: without an ETRecord they do not map to modules.
- TensorRT: ``trtexec --dumpProfile --exportProfile --exportLayerInfo`` JSON, parsed by :func:`parse_trtexec_profile`
  (run on a board; only the parser is tested here, on a sample in trtexec's documented format).

Every profile also reports the profiler's own inflation: the p50 of plain calls against the p50 of profiled
calls, timed in interleaved rounds in the same call (ONNX Runtime's profiling is known to inflate).

Example::

    prof = profile_artifact(load_model("model.onnx"), threads=2)
    prof.total_ms, prof.ops_sum_ms, prof.inflation, prof.by_module()[:5]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.op_names import OpNameMapper
from benchmarks.profilers.base import LayerProfile, OpTime
from benchmarks.profilers.trtexec_profile import parse_trtexec_profile
from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError, InputFileError
from edgetl.formats import load_entry

__all__ = ["PROFILERS", "SUM_TOLERANCE", "LayerProfile", "OpTime", "parse_trtexec_profile", "plot_profile",
           "profile_artifact"]

PROFILERS = ("onnxruntime", "openvino", "torch", "executorch")
_DEFAULT = {Format.ONNX: "onnxruntime", Format.ORT: "onnxruntime", Format.OPENVINO: "openvino",
            Format.TORCH: "torch", Format.EXECUTORCH: "executorch"}
#: How far the per-operator sum may fall from the profiled total (a share of the total), per runtime: time
#: between operators (executor bookkeeping, output copies, waits for a preempted thread) belongs to no
#: operator. PyTorch's modules include the model body (Python between modules), so only the profiler's own
#: enter/exit of the outermost range is left out. Stated in every profile.
SUM_TOLERANCE = {"onnxruntime": 0.35, "openvino": 0.6, "torch": 0.1, "executorch": 0.35, "trtexec": 0.0}
# runtime -> "module:function" of its profiler (imported when used: each needs its runtime's library)
_BACKENDS = {name: f"benchmarks.profilers.{name}_profiler:profile" for name in PROFILERS}


def _inputs(artifact: Artifact) -> np.ndarray:
    from benchmarks.inputs import real_inputs

    batches, _ = real_inputs(artifact, batch=1, count=1)
    return batches[0]


def _module_names(artifact: Artifact, source) -> set[str] | None:
    """Module names of the source model: given, in memory, or rebuilt from the zoo arch the sidecar records."""
    model = getattr(source, "model", None) if source is not None else artifact.model
    if model is None and artifact.arch:
        try:
            from edgetl.models import build_arch

            model = build_arch(artifact.arch, num_classes=max(1, artifact.num_classes))
        except Exception:  # noqa: BLE001 - unknown arch: names are reported unchecked
            model = None
    return {n for n, _ in model.named_modules()} if model is not None else None


def profile_artifact(artifact: Artifact, *, runtime: str | None = None, threads: int | None = None,
                     calls: int = 60, rounds: int = 3, warmup: int = 5, source: Artifact | None = None,
                     device: str = "local") -> LayerProfile:
    """Profile ``artifact`` per operator on ``runtime`` (default: the format's own); see the module docstring.

    ``source`` is the PyTorch model the artifact was exported from, to check that mapped module names exist
    (without it, names are checked against the zoo architecture the artifact records, if any).
    """
    runtime = runtime or _DEFAULT.get(artifact.format)
    if runtime not in _BACKENDS:
        raise ConfigError(f"no per-layer profiler for {artifact.format.value} artifacts here; profiling runs on "
                          f"{', '.join(PROFILERS)} (TensorRT: trtexec --exportProfile on the board)")
    if runtime == "openvino" and artifact.format not in (Format.OPENVINO, Format.ONNX):
        raise ConfigError(f"OpenVINO profiles OpenVINO IR or ONNX, not {artifact.format.value}")
    if runtime == "onnxruntime" and artifact.format not in (Format.ONNX, Format.ORT):
        raise ConfigError(f"ONNX Runtime profiles ONNX or ORT files, not {artifact.format.value}")
    if runtime in ("onnxruntime", "openvino", "executorch") and (artifact.path is None or not artifact.path.exists()):
        raise InputFileError(f"{artifact.name}: {runtime} profiles a file; none found")
    if calls < 2 or rounds < 1:
        raise ConfigError(f"profile needs calls >= 2 and rounds >= 1, got {calls} and {rounds}")
    names = _module_names(artifact, source)
    onnx_source = artifact.path if artifact.format is Format.ONNX else _onnx_beside(artifact)
    mapper = OpNameMapper.from_onnx(onnx_source, module_names=names) if onnx_source else OpNameMapper(None, names)
    x = _inputs(artifact)
    ops, total, p_plain, p_prof, version = load_entry(_BACKENDS[runtime])(artifact, x, threads, calls, rounds, warmup, mapper)
    notes = []
    if names is None:
        notes.append("module names are read from the operator names, unchecked: no source model is known")
    if runtime == "executorch":
        notes.append("ExecuTorch delegate operators carry XNNPACK kernel names; without an ETRecord they do "
                     "not map to modules")
    ops.sort(key=lambda o: -o.ms)
    prof = LayerProfile(artifact=artifact.name, format=artifact.format.value, runtime=runtime,
                        runtime_version=version, threads=threads, calls=calls, ops=ops, total_ms=total,
                        plain_p50_ms=p_plain, profiled_p50_ms=p_prof, device=device, notes=notes,
                        sum_tolerance=SUM_TOLERANCE[runtime])
    if total > 0 and abs(prof.ops_sum_ms - total) > prof.sum_tolerance * total:
        prof.notes.append(f"per-operator times sum to {prof.ops_sum_ms:.4g} ms against a profiled total of "
                          f"{total:.4g} ms: outside the stated {prof.sum_tolerance:.0%} tolerance (a busy machine "
                          "preempts the runtime between operators)")
    return prof


def _onnx_beside(artifact: Artifact) -> Path | None:
    """An ONNX file the IR was converted from, when it sits beside it (same stem), for node scopes."""
    if artifact.path is None:
        return None
    cand = artifact.path.with_suffix(".onnx")
    return cand if cand.exists() and cand != artifact.path else None


# --------------------------------------------------------------------------- chart
def plot_profile(prof: LayerProfile, path: str | Path, *, top: int = 20) -> Path:
    """A horizontal bar chart (PNG) of the modules (or operators) where the time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = prof.by_module()[:top]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="#4477aa")
    ax.set_xlabel("ms per inference (profiled)")
    ax.set_title(f"{prof.artifact} on {prof.runtime} {prof.runtime_version}, threads {prof.threads or 'all'}: "
                 f"total {prof.total_ms:.3f} ms, profiler inflation {prof.inflation:.2f}x", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
