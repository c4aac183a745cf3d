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

import json
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.op_names import OpNameMapper
from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError, InputFileError, MissingDependencyError, ModelError

_COMPUTE = re.compile(r"conv|linear|gemm|matmul", re.IGNORECASE)

__all__ = ["PROFILERS", "LayerProfile", "OpTime", "parse_trtexec_profile", "plot_profile", "profile_artifact"]

PROFILERS = ("onnxruntime", "openvino", "torch", "executorch")
_DEFAULT = {Format.ONNX: "onnxruntime", Format.ORT: "onnxruntime", Format.OPENVINO: "openvino",
            Format.TORCH: "torch", Format.EXECUTORCH: "executorch"}
#: How far the per-operator sum may fall from the profiled total (a share of the total), per runtime: time
#: between operators (executor bookkeeping, output copies, waits for a preempted thread) belongs to no
#: operator. PyTorch's modules include the model body (Python between modules), so only the profiler's own
#: enter/exit of the outermost range is left out. Stated in every profile.
SUM_TOLERANCE = {"onnxruntime": 0.35, "openvino": 0.6, "torch": 0.1, "executorch": 0.35, "trtexec": 0.0}


@dataclass
class OpTime:
    name: str  # the runtime's operator name
    op_type: str
    ms: float  # mean per inference over the profiled calls
    module: str | None = None  # PyTorch module it maps back to, if any


@dataclass
class LayerProfile:
    artifact: str
    format: str
    runtime: str
    runtime_version: str
    threads: int | None
    calls: int
    ops: list[OpTime]
    total_ms: float  # the profiler's own total per inference (mean over the profiled calls, as are the ops)
    plain_p50_ms: float  # wall-clock p50 without profiling, same call, interleaved
    profiled_p50_ms: float  # wall-clock p50 with profiling
    device: str = "local"
    host: str = "local"
    sum_tolerance: float = 0.35
    notes: list[str] = field(default_factory=list)

    @property
    def ops_sum_ms(self) -> float:
        return float(sum(o.ms for o in self.ops))

    @property
    def inflation(self) -> float:
        """Profiled p50 over plain p50: how much the profiler itself slows every call."""
        return self.profiled_p50_ms / self.plain_p50_ms if self.plain_p50_ms > 0 else float("nan")

    def by_module(self) -> list[tuple[str, float]]:
        """(module, ms) largest first; operators that map to no module are pooled under ``(unmapped)``."""
        acc: dict[str, float] = defaultdict(float)
        for o in self.ops:
            acc[o.module or "(unmapped)"] += o.ms
        return sorted(acc.items(), key=lambda kv: -kv[1])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ops_sum_ms=self.ops_sum_ms, inflation=self.inflation,
                 by_module=[{"module": m, "ms": ms} for m, ms in self.by_module()],
                 mapped_share=sum(o.ms for o in self.ops if o.module) / self.ops_sum_ms if self.ops_sum_ms else 0.0)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerProfile:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        kw["ops"] = [OpTime(**o) for o in d.get("ops", [])]
        return cls(**kw)


# --------------------------------------------------------------------------- shared
def _p50(samples: list[int]) -> float:
    s = sorted(samples)
    return s[len(s) // 2] / 1e6


def _interleaved(plain: Callable[[], Any], profiled: Callable[[], Any], *, calls: int, rounds: int,
                 warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        plain()
    a_s, b_s = [], []
    per = max(1, calls // rounds)
    for _ in range(rounds):
        for fn, out in ((plain, a_s), (profiled, b_s)):
            for _ in range(per):
                t = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - t)
    return _p50(a_s), _p50(b_s)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _per_run_ops(runs: list[dict[str, float]], totals: list[float], kinds: dict[str, str],
                 mapper_fn) -> tuple[list[OpTime], float]:
    """Each operator's mean time, and the mean total, over the quieter half of the profiled runs.

    Means, not medians: on a busy machine preemption lands on a different operator each run, so per-operator
    medians drop it and no longer add up to a run; means of the parts add up to the mean of the whole. The
    runs kept are those whose total is at most the median total (the same runs for parts and whole), so a
    call another process preempted does not spread its wait over the operators.
    """
    if len(totals) != len(runs) or not runs:
        raise ModelError(f"the profiler returned {len(runs)} runs and {len(totals)} totals")
    cut = sorted(totals)[(len(totals) - 1) // 2]
    keep = [i for i, t in enumerate(totals) if t <= cut]
    names = {k for i in keep for k in runs[i]}
    ops = [OpTime(k, kinds.get(k, ""), _mean([runs[i].get(k, 0.0) for i in keep]), mapper_fn(k)) for k in names]
    return ops, _mean([totals[i] for i in keep])


def _inputs(artifact: Artifact) -> np.ndarray:
    from benchmarks.harness import real_inputs

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


# --------------------------------------------------------------------------- ONNX Runtime
def _profile_ort(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> tuple[list[OpTime], float, float, float, str]:
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
        p_plain, p_prof = _interleaved(lambda: plain.run(None, feed), lambda: prof.run(None, feed),
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
    ops, total = _per_run_ops(per_run, [r["dur"] / 1000.0 for r in runs], kinds, mapper.module)
    return ops, total, p_plain, p_prof, ort.__version__


# --------------------------------------------------------------------------- OpenVINO
def _profile_ov(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> tuple[list[OpTime], float, float, float, str]:
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
    p_plain, p_prof = _interleaved(lambda: plain.infer({0: x}, share_inputs=True), profiled, calls=calls,
                                   rounds=rounds, warmup=warmup)
    ops, total = _per_run_ops(per_run, totals, kinds, module_of)
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


# --------------------------------------------------------------------------- PyTorch
def _profile_torch(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> tuple[list[OpTime], float, float, float, str]:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if artifact.model is None:
        raise ModelError(f"{artifact.name}: no PyTorch module in memory to profile")
    model = artifact.model.eval()
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    t = torch.from_numpy(x)
    prefix = "edgetl.module::"
    stack: list[Any] = []
    active = {"on": True}  # plain calls run with the hooks idle (removing them per call would cost more)

    def pre(mod, inp, _n=""):
        if active["on"]:
            rf = record_function(prefix + _n)
            rf.__enter__()
            stack.append(rf)

    def post(mod, inp, out):
        if active["on"]:
            stack.pop().__exit__(None, None, None)
    handles = []
    for name, m in model.named_modules():  # the root too: its own time is the Python and ops between modules
        handles.append(m.register_forward_pre_hook(lambda mod, inp, _n=name: pre(mod, inp, _n)))
        handles.append(m.register_forward_hook(post))
    events: list[Any] = []

    def plain():
        active["on"] = False
        with torch.inference_mode():
            model(t)
        active["on"] = True

    def profiled():
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as p:
            with record_function("edgetl.forward"):
                model(t)
        events.append(p.events())
    try:
        for _ in range(warmup):
            profiled()
        events.clear()
        p_plain, p_prof = _interleaved(plain, profiled, calls=calls, rounds=rounds, warmup=0)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    per_run, totals, kinds = [], [], {}
    for evs in events:
        run: dict[str, float] = {}
        child: dict[int, float] = defaultdict(float)
        mods = []
        for e in evs:
            if e.name == "edgetl.forward":
                totals.append(e.cpu_time_total / 1000.0)
                continue
            if e.name.startswith(prefix):
                mods.append(e)
                owner = _module_ancestor(e, prefix)
                if owner is not None:
                    child[id(owner)] += e.cpu_time_total
        for e in mods:  # a module's own time: its range less its child modules' ranges
            name = e.name[len(prefix):] or "(model body)"
            kinds[name] = type(modules.get(e.name[len(prefix):], model)).__name__
            run[name] = run.get(name, 0.0) + max(0.0, e.cpu_time_total - child[id(e)]) / 1000.0
        per_run.append(run)
    ops, total = _per_run_ops(per_run, totals, kinds,
                              lambda k: None if k == "(model body)" else mapper._known(k))
    return ops, total, p_plain, p_prof, torch.__version__


def _module_ancestor(event, prefix: str):
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(prefix):
        parent = parent.cpu_parent
    return parent


# --------------------------------------------------------------------------- ExecuTorch
def _profile_executorch(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> tuple[list[OpTime], float, float, float, str]:
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
    p_plain, p_prof = _interleaved(lambda: plain.forward(t), lambda: prof.forward(t), calls=calls, rounds=rounds,
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


_BACKENDS = {"onnxruntime": _profile_ort, "openvino": _profile_ov, "torch": _profile_torch,
             "executorch": _profile_executorch}


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
    ops, total, p_plain, p_prof, version = _BACKENDS[runtime](artifact, x, threads, calls, rounds, warmup, mapper)
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


# --------------------------------------------------------------------------- trtexec
def parse_trtexec_profile(profile: Any, layer_info: Any = None, *, mapper: OpNameMapper | None = None,
                          artifact: str = "model.engine") -> LayerProfile:
    """A :class:`LayerProfile` from trtexec's ``--exportProfile`` JSON (and ``--exportLayerInfo``, for names).

    ``--exportProfile`` writes a list: ``{"count": N}`` then one record per layer with ``name``, ``timeMs``
    (total over the N runs), ``averageMs``, ``medianMs`` and ``percentage``. ``--exportLayerInfo`` (with
    ``--profilingVerbosity=detailed``) writes ``{"Layers": [{"Name", "LayerType", "Metadata", ...}]}``, whose
    ``Metadata`` holds the ONNX node names a fused layer came from (``[ONNX Layer: /features/0/Conv]``).
    """
    if not isinstance(profile, list) or not profile or not isinstance(profile[0], dict) or "count" not in profile[0]:
        raise ConfigError("trtexec profile: expected a JSON list starting with {\"count\": N}")
    count = int(profile[0]["count"])
    meta: dict[str, tuple[str, str]] = {}
    if isinstance(layer_info, dict):
        for layer in layer_info.get("Layers", []):
            if isinstance(layer, dict) and "Name" in layer:
                meta[layer["Name"]] = (str(layer.get("LayerType", "")), str(layer.get("Metadata", "")))
    mapper = mapper or OpNameMapper()
    ops = []
    for i, rec in enumerate(profile[1:], 1):
        if not isinstance(rec, dict) or "name" not in rec or not ({"averageMs", "timeMs"} & set(rec)):
            raise ConfigError(f"trtexec profile: record {i} has no name/averageMs ({rec!r:.120})")
        ms = float(rec["averageMs"]) if "averageMs" in rec else float(rec["timeMs"]) / max(1, count)
        kind, md = meta.get(rec["name"], ("", ""))
        onnx_names = [s.split("]")[0].strip() for s in md.split("[ONNX Layer:")[1:]]
        source = onnx_names[0] if onnx_names else rec["name"].split(" + ")[0]
        ops.append(OpTime(rec["name"], kind, ms, mapper.module(source)))
    total = sum(o.ms for o in ops)
    ops.sort(key=lambda o: -o.ms)
    return LayerProfile(artifact=artifact, format="tensorrt", runtime="trtexec", runtime_version="", threads=None,
                        calls=count, ops=ops, total_ms=total, plain_p50_ms=float("nan"),
                        profiled_p50_ms=float("nan"), sum_tolerance=0.0,
                        notes=["trtexec's per-layer times are GPU compute per layer (--dumpProfile synchronises "
                               "after each layer, so the total exceeds a plain run's); no plain run to compare"])


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
