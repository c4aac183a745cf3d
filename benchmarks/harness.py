"""Latency measurement a careful engineer would sign: single-stream, warm-up, minimum time AND count.

One measurement (:func:`measure`) of one artifact:

1. builds real inputs from the artifact's input spec: images of the dataset the model was trained on when the
   artifact records it, else real photos (``skimage.data``), else the scans of sklearn's digits; never noise;
2. imports the runtime first, so the cold start is the model's (load + first inference), not the library's;
3. warms up for ``warmup_runs`` calls and at least ``warmup_s`` seconds;
4. times each call with ``perf_counter_ns`` around ``run`` + the runner's ``synchronize``, until both
   ``min_count`` calls and ``min_time_s`` seconds are done (or ``max_time_s`` passes);
5. reports p90 (the MLPerf single-stream headline) with p50/p95/p99/mean/std/min/max and the count, the
   runtime's own per-call latency where it reports one (OpenVINO), peak memory (RSS high-water mark over the
   pre-load RSS), model size on disk, and the environment (CPU, cores, library versions, power mode).

Example::

    r = measure(load_model("model.xml"), BenchConfig(threads=2))
    r.latency_ms.p90, r.latency_ms.count, r.env["cpu"]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
import gc
import importlib
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import LatencyStats
from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.errors import ConfigError, ModelError
from edgetl.progress import task

__all__ = ["BenchConfig", "BenchResult", "InputSource", "SCHEMA_VERSION", "environment", "measure", "model_size",
           "real_inputs"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera",
           "coins", "moon", "grass", "brick", "gravel", "text", "page", "colorwheel")
_PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "fp32": "fp32", "fp16": "fp16"}
# Python modules whose import the cold start should not include.
_RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
                    "executorch": "executorch.runtime", "litert": "ai_edge_litert", "tensorrt": "tensorrt"}
_VERSIONED = ("edgetl", "numpy", "torch", "onnxruntime", "openvino", "executorch", "ai-edge-litert", "tensorrt",
              "nncf", "onnx")


class InputSource(str, enum.Enum):
    """Where benchmark inputs come from: the artifact's dataset if recorded (``auto``), or forced."""

    AUTO = "auto"
    DATA = "data"
    PHOTOS = "photos"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``None`` threads: the runtime's default (every core)."""

    batch: int = 1
    threads: int | None = None
    warmup_runs: int = 10
    warmup_s: float = 0.5
    min_time_s: float = 2.0
    min_count: int = 100
    max_time_s: float = 120.0
    runtime: str | None = None
    precision: str | None = None  # runtime-side precision hint (OpenVINO f32 / bf16 / f16); None: true fp32
    hint: str = "latency"  # OpenVINO performance hint: latency, throughput or none
    compile: bool = False  # torch.compile instead of eager
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers
    device: str = "cpu"
    inputs: InputSource = InputSource.AUTO
    distinct_inputs: int = 8  # cycled so caches see more than one image

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", InputSource(self.inputs))
        object.__setattr__(self, "providers", tuple(self.providers))
        for name in ("batch", "min_count", "distinct_inputs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        for name in ("warmup_s", "min_time_s", "max_time_s"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {v}")
        if self.warmup_runs < 0:
            raise ConfigError(f"warmup_runs must not be negative, got {self.warmup_runs}")
        if self.max_time_s < self.min_time_s:
            raise ConfigError(f"max_time_s ({self.max_time_s}) must be at least min_time_s ({self.min_time_s})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = self.inputs.value
        d["providers"] = list(self.providers)
        return d


@dataclass
class BenchResult:
    """One measured artifact on one device. ``to_dict`` is the schema stored, exported and sent over SSH."""

    artifact: str
    format: str
    runtime: str
    precision: str
    batch: int
    threads: int | None
    latency_ms: LatencyStats
    throughput: float  # items per second over the timed loop
    device: str = "local"
    host: str = "local"
    path: str | None = None
    runtime_latency_ms: LatencyStats | None = None  # the runtime's own per-call time, where it reports one
    load_ms: float | None = None
    first_inference_ms: float | None = None
    cold_start_ms: float | None = None  # load + first inference
    peak_rss_delta_mb: float | None = None
    model_size_bytes: int | None = None
    accuracy: float | None = None
    accuracy_source: str | None = None
    inputs: str = ""
    tool: str = "edgetl"  # or "trtexec"
    runner: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    artifact_meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    arch: str = field(default_factory=platform.machine)  # the machine that measured (x86_64, aarch64, ...)
    emulated: str | None = None  # e.g. "emulated on x86-64": a profile measured on a machine it does not describe
    contended: bool = False  # other processes took CPU while this was timed (see benchmarks.contention)
    contention: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # interleaved rounds (benchmarks.interleave)
    speedup: dict[str, Any] | None = None  # against the baseline of the same rounds
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA_VERSION

    @property
    def headline_ms(self) -> float:
        """p90 of the per-call latency (MLPerf single-stream)."""
        return self.latency_ms.p90

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latency_ms"] = self.latency_ms.to_dict()
        d["runtime_latency_ms"] = self.runtime_latency_ms.to_dict() if self.runtime_latency_ms else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        if not isinstance(d, dict) or "latency_ms" not in d:
            raise ConfigError("not a benchmark result (no latency_ms)")
        if int(d.get("schema", 1)) > SCHEMA_VERSION:
            raise ConfigError(f"benchmark result schema {d.get('schema')} is newer than this edgetl "
                              f"({SCHEMA_VERSION}); upgrade edgetl")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["latency_ms"] = LatencyStats.from_dict(d["latency_ms"])
        if d.get("runtime_latency_ms"):
            kw["runtime_latency_ms"] = LatencyStats.from_dict(d["runtime_latency_ms"])
        return cls(**kw)


# --------------------------------------------------------------------------- inputs
def _recorded_dataset(artifact: Artifact) -> str | None:
    name = artifact.extra.get("data")
    for rec in reversed(artifact.history):
        name = name or rec.options.get("data")
    return str(name) if name else None


@functools.lru_cache(maxsize=4)
def _photo_inputs(spec: InputSpec, n: int) -> tuple[np.ndarray, str] | None:
    try:
        import skimage.data as sd
    except ImportError:
        return None
    import torch

    from edgetl.data import prepare

    out, used = [], []
    for name in _PHOTOS:
        if len(out) == n:
            break
        try:
            img = np.asarray(getattr(sd, name)())
        except Exception:  # noqa: BLE001 - a photo missing from this skimage build: take the next
            continue
        if img.dtype != np.uint8:
            continue
        img = img[..., :3] if img.ndim == 3 else img[..., None]
        h, w = img.shape[:2]
        th, tw = spec.resolution
        # Centre-crop to the model's aspect ratio so the resize does not squash the photo.
        if h * tw > w * th:
            ch = max(1, round(w * th / tw))
            img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
        else:
            cw = max(1, round(h * tw / th))
            img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        out.append(prepare(t, spec).numpy())
        used.append(name)
    if not out:
        return None
    return np.concatenate(out), f"photos:skimage.data({','.join(used)})"


@functools.lru_cache(maxsize=4)
def _dataset_inputs(name: str, spec: InputSpec, n: int) -> tuple[np.ndarray, str] | None:
    """Cached: benching several exports of one model loads their dataset once."""
    from edgetl.data import BUILTIN_DATASETS, load_data, prepare

    if name not in BUILTIN_DATASETS and not Path(name).exists():
        return None
    try:
        splits = load_data(name, seed=0)
    except Exception as e:  # noqa: BLE001 - fall back to photos, but say why
        log.warning("cannot load the artifact's dataset %r for benchmark inputs (%s); using photos", name, e)
        return None
    test = splits.test if len(splits.test) else splits.train
    k = min(n, len(test))
    return prepare(test.images[:k], spec).numpy(), f"data:{splits.name}/test[0:{k}]"


def real_inputs(artifact: Artifact, *, batch: int = 1, count: int = 8,
                source: InputSource | str = InputSource.AUTO) -> tuple[list[np.ndarray], str]:
    """``count`` float32 batches of real images prepared to ``artifact.input_spec``, and where they came from.

    Example::

        batches, origin = real_inputs(art, batch=1)   # origin e.g. "data:mnist5k/test[0:8]"
    """
    source = InputSource(source)
    spec, want = artifact.input_spec, batch * count
    got = None
    data = _recorded_dataset(artifact)
    if source is not InputSource.PHOTOS and data:
        got = _dataset_inputs(data, spec, want)
    if got is None and source is InputSource.DATA:
        raise ConfigError(f"{artifact.name} records no loadable dataset ({data or 'none recorded'}); use photo inputs")
    if got is None:
        got = _photo_inputs(spec, want)
    if got is None:  # no scikit-image: the scans of handwritten digits that ship with scikit-learn
        got = _dataset_inputs("digits", spec, want)
    if got is None:
        raise ConfigError("no real images available for benchmark inputs; install scikit-image")
    images, origin = got
    reps = -(-want // len(images))
    images = np.concatenate([images] * reps)[:want].astype(np.float32)
    return [np.ascontiguousarray(images[i * batch : (i + 1) * batch]) for i in range(count)], origin


# --------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        # x86 says "model name"; ARM boards say "Hardware" / "Model" (x86's "model" is a number).
        for key in ("model name", "hardware", "cpu model", "model"):
            if fields.get(key) and not fields[key].isdigit():
                return fields[key]
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _board_model() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(p).read_text().strip("\x00\n ")
        except OSError:
            continue
    return None


def _physical_cores() -> int | None:
    try:
        seen = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "physical id":
                phys = v.strip()
            elif k == "core id":
                core = v.strip()
            elif not line.strip() and core is not None:
                seen.add((phys, core))
                phys = core = None
        return len(seen) or None
    except OSError:
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _command_output(cmd: str, timeout: float = 5.0) -> str | None:
    exe = cmd.split()[0]
    if not shutil.which(exe) and not Path(exe).exists():
        return None
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)  # noqa: S602 - profile text
    except (OSError, subprocess.SubprocessError):
        return None
    text = (r.stdout or r.stderr).strip()
    return text[:500] or None


def _power_mode(profile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cmd = getattr(profile, "power_mode_cmd", None)
    if cmd:
        out["power_mode"] = _command_output(cmd)
    elif shutil.which("nvpmodel"):
        out["power_mode"] = _command_output("nvpmodel -q")
    try:
        out["cpu_governor"] = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    return out


def environment(profile=None) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, memory, OS, library versions, power mode, device profile."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    env = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "board": _board_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "physical_cores": _physical_cores(),
        "memory_gb": mem,
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "profile": getattr(profile, "name", None),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        **_power_mode(profile),
    }
    return {k: v for k, v in env.items() if v is not None}


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds busy on the whole machine, CPU seconds of this process), to tell what else ran meanwhile."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is already in user
    t = os.times()
    return busy, t.user + t.system


def _background_load(before, after, wall_s: float) -> float | None:
    """Cores' worth of CPU other processes used during the timed loop."""
    if before is None or after is None or wall_s <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall_s)


# --------------------------------------------------------------------------- memory and size
def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 / (1024 if platform.system() == "Darwin" else 1)
    except (ImportError, OSError):
        return None


def model_size(artifact: Artifact, source_path: Path | None = None) -> int | None:
    """Bytes on disk: the file with its companions (OpenVINO .bin, ONNX external data), or the checkpoint."""
    path = artifact.path or source_path
    if path is None:
        if artifact.model is None:
            return None
        return int(sum(t.numel() * t.element_size() for t in artifact.model.state_dict().values()))
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if not path.exists():
        return None
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        size += path.with_suffix(".bin").stat().st_size
    if path.suffix == ".onnx":
        for companion in (path.with_suffix(".onnx.data"), path.with_suffix(".data")):
            if companion.exists():
                size += companion.stat().st_size
    return size


def _stored_precision(artifact: Artifact) -> str:
    """The precision the artifact's weights were made in, from its history or its graph."""
    for rec in reversed(artifact.history):
        p = rec.options.get("precision") or rec.metrics.get("precision")
        if p:
            return str(p)
        if rec.stage.startswith("quantize"):
            return "int8"
    if artifact.format in (Format.ONNX, Format.ORT) and artifact.path is not None and artifact.path.suffix == ".onnx":
        try:
            import onnx

            m = onnx.load(str(artifact.path), load_external_data=False)
            ops = {n.op_type for n in m.graph.node}
            if ops & {"QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}:
                return "int8"
            if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
                return "fp16"
        except Exception:  # noqa: BLE001 - unknown graphs are reported as fp32 below
            pass
    if artifact.format is Format.OPENVINO and artifact.path is not None:
        try:
            head = artifact.path.read_text(errors="ignore")
            if 'type="FakeQuantize"' in head or 'element_type="i8"' in head or 'element_type="u8"' in head:
                return "int8"
        except OSError:
            pass
    return "fp32"


def _accuracy(artifact: Artifact) -> tuple[float | None, str | None]:
    for rec in reversed(artifact.history):
        for key in ("accuracy", "test_accuracy"):
            v = rec.metrics.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v), f"{rec.stage}.{key}"
    return None, None


# --------------------------------------------------------------------------- measurement
def _preimport(runtime: str) -> None:
    mod = _RUNTIME_MODULES.get(runtime)
    if mod:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - the runner raises the proper MissingDependencyError
            pass


def _runner_extra(artifact: Artifact, config: BenchConfig, runtime: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if runtime == "openvino":
        extra["batch"] = config.batch
        extra["hint"] = config.hint
    if runtime == "torch" and config.compile:
        extra["compile"] = True
    if runtime == "onnxruntime" and config.providers:
        extra["providers"] = list(config.providers)
    return extra


def measure(artifact: Artifact, config: BenchConfig | None = None, *, profile=None,
            source_path: str | Path | None = None, reload: Callable[[], Artifact] | None = None) -> BenchResult:
    """Measure ``artifact`` single-stream; see the module docstring for the procedure.

    ``reload`` loads the artifact again from its file inside the cold-start timing (PyTorch checkpoints,
    whose load is the file read; exported formats are loaded by their runner anyway).
    """
    from edgetl.runtimes import RunnerOptions, open_runner, runner_for

    config = config or BenchConfig()
    runtime = config.runtime or (profile.runtime_for(artifact.format) if profile is not None else None)
    runtime = runner_for(artifact.format, runtime)
    if config.compile and runtime != "torch":
        raise ConfigError(f"--compile is torch.compile; {artifact.name} runs in {runtime}")
    inputs, origin = real_inputs(artifact, batch=config.batch, count=config.distinct_inputs, source=config.inputs)
    _preimport(runtime)
    options = RunnerOptions(threads=config.threads, device=config.device, precision=config.precision,
                            extra=_runner_extra(artifact, config, runtime))

    if reload is not None:
        artifact = None  # type: ignore[assignment] - dropped so the reload's memory is counted
    gc.collect()
    peak_reset = _reset_peak()
    rss0 = _rss_mb()
    t0 = time.perf_counter_ns()
    if reload is not None:
        artifact = reload()
    runner = open_runner(artifact, runtime=runtime, options=options)
    try:
        t1 = time.perf_counter_ns()
        fixed = runner.fixed_batch
        if fixed and fixed != config.batch:
            raise ConfigError(f"{artifact.name} has a static batch of {fixed}; bench it with --batch {fixed}, or "
                              "export it with a dynamic batch")
        out = runner.run(inputs[0])
        runner.synchronize()
        t2 = time.perf_counter_ns()
        out = np.asarray(out)
        if out.shape[0] != config.batch:
            raise ModelError(f"{artifact.name} returned {out.shape[0]} rows for a batch of {config.batch}")
        finite = bool(np.isfinite(out).all())

        runtime_side = runner.own_clock
        n_in = len(inputs)
        # Warm-up: caches, allocator pools, JIT and frequency ramp-up settle before anything counts.
        i, start = 0, time.perf_counter()
        while i < config.warmup_runs or time.perf_counter() - start < config.warmup_s:
            runner.run(inputs[i % n_in])
            runner.synchronize()
            i += 1
            if time.perf_counter() - start > config.max_time_s:
                break

        samples: list[int] = []
        rt_samples: list[float] = []
        with task(f"bench {artifact.name} [{runtime}]", total=config.min_count) as bar:
            busy0 = _cpu_seconds()
            loop_start = time.perf_counter_ns()
            min_ns, max_ns = int(config.min_time_s * 1e9), int(config.max_time_s * 1e9)
            next_report, reported = loop_start + 200_000_000, 0
            while True:
                x = inputs[len(samples) % n_in]
                a = time.perf_counter_ns()
                runner.run(x)
                runner.synchronize()
                b = time.perf_counter_ns()
                samples.append(b - a)
                if runtime_side:
                    rt_samples.append(runner.last_latency_ms)
                elapsed = b - loop_start
                if b >= next_report:  # progress between timed calls, at most five times a second
                    s = sorted(samples)
                    bar.advance(min(len(samples), config.min_count) - reported,
                                p50_ms=s[len(s) // 2] / 1e6, calls=len(samples))
                    reported = min(len(samples), config.min_count)
                    next_report = b + 200_000_000
                if (len(samples) >= config.min_count and elapsed >= min_ns) or elapsed >= max_ns:
                    break
            bar.advance(config.min_count - reported)
            loop_ns = time.perf_counter_ns() - loop_start
            busy1 = _cpu_seconds()
        peak = _peak_mb()
        info = runner.describe()
    finally:
        runner.close()

    stats = LatencyStats.from_ns(samples)
    warnings: list[str] = []
    background = _background_load(busy0, busy1, loop_ns / 1e9)
    contended = background is not None and background > 0.25
    if contended:
        warnings.append(f"other processes used {background:.1f} cores while this was timed: the latency is "
                        "inflated (thread pools that wait on busy cores, e.g. PyTorch eager with several threads, "
                        "suffer most); measure on an idle machine")
    if len(samples) < config.min_count:
        warnings.append(f"only {len(samples)} calls within max_time_s={config.max_time_s} (asked for {config.min_count})")
    if not finite:
        warnings.append("the model produced non-finite outputs on real inputs")
    # What ran: int8 weights stay "int8"; otherwise the runtime-side precision where the runtime picks one
    # (OpenVINO's inference precision hint: f32, bf16 or f16), else the stored precision.
    stored = _stored_precision(artifact)
    ran = _PRECISION_NAMES.get(str(info.get("precision")).lower()) if runtime == "openvino" else None
    shown = stored if stored == "int8" or ran is None else ran
    acc, acc_src = _accuracy(artifact)
    return BenchResult(
        artifact=Path(source_path).name if source_path and artifact.path is None else artifact.name,
        path=str(artifact.path or source_path or "") or None, format=artifact.format.value,
        runtime=runtime, precision=str(shown), batch=config.batch,
        threads=config.threads if config.threads is not None else info.get("threads"),
        latency_ms=stats, runtime_latency_ms=LatencyStats.from_samples(rt_samples) if rt_samples else None,
        throughput=config.batch * len(samples) / (loop_ns / 1e9),
        load_ms=(t1 - t0) / 1e6, first_inference_ms=(t2 - t1) / 1e6, cold_start_ms=(t2 - t0) / 1e6,
        peak_rss_delta_mb=(round(peak - rss0, 2) if peak_reset and peak is not None and rss0 is not None else None),
        model_size_bytes=model_size(artifact, Path(source_path) if source_path else None),
        accuracy=acc, accuracy_source=acc_src, inputs=origin,
        runner={**info, "outputs_finite": finite, "warmup_calls": i},
        config=config.to_dict(), env={**environment(profile), "background_load_cores": background}, warnings=warnings,
        device=getattr(profile, "name", None) or "local", contended=contended,
        contention={"others_cores_max": background, "rule": {"others_cores": 0.25}},
        artifact_meta={"arch": artifact.arch, "stages": [r.stage for r in artifact.history],
                       "input_shape": list(artifact.input_spec.shape)},
    )
