"""TensorRT: a serialized engine where TensorRT and a CUDA GPU are present, else a build bundle for the device.

Engines are specific to the GPU and TensorRT version that built them (an engine from an x86 workstation does
not load on a Jetson), so the portable output is the bundle: a directory with the ONNX, a ``build.sh`` that runs
``trtexec`` on the target with the flags this export calls for, a README and the edgetl metadata (written as the
sidecar of the engine ``build.sh`` will create, so ``edgetl eval``/``bench`` on the built engine know its input
spec and labels). Where TensorRT imports and a GPU is visible, the engine is built here through the Python API
(same settings) and written beside the bundle, with the TensorRT version and GPU name in its sidecar.

Precision flags, following TensorRT's documentation:

* fp32: ``--noTF32`` (Ampere and later GPUs, Orin included, otherwise run "fp32" convolutions in TF32);
* fp16: ``--fp16``;
* int8 needs an explicitly quantized (Q/DQ) ONNX, built with ``--stronglyTyped`` so every tensor keeps the type
  the graph gives it (builder precision flags are not allowed with it). TensorRT 8.x has no strongly typed
  networks; there ``build.sh`` falls back to ``--int8``, which honours the Q/DQ scales. ``--int8`` on an
  unquantized ONNX would use placeholder scales without a calibration cache, so that is refused.

Example::

    bundle = export_tensorrt(onnx_art, Path("out/model_tensorrt"), precision="fp16", dynamic_batch=True)
    print((bundle.path / "build.sh").read_text())
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ConfigError, ExportError

__all__ = ["BuildSettings", "build_engine", "export_tensorrt", "exporter", "tensorrt_available", "trtexec_args"]

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"
OPT_BATCH = 1  # edge inference is latency-bound at batch 1: tune the kernels for it


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides the engine; one source for ``build.sh`` and the Python-API build."""

    onnx: str
    engine: str
    input_name: str
    chw: tuple[int, int, int] | None  # an image classifier's input (None: a model by its contract, see profiles)
    precision: str  # fp32 | fp16 | int8
    qdq: bool
    dynamic_batch: bool
    max_batch: int = 32
    opt_batch: int = OPT_BATCH
    dla_core: int | None = None
    workspace_mib: int = 1024
    timing_cache: str = TIMING_CACHE
    # A model by its contract: one optimization profile, (input name, min, opt, max) per input, from
    # --min-shape/--opt-shape/--max-shape (edgetl.contract_shapes.tensorrt_profiles); empty when every input is static.
    profiles: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()

    def shape(self, batch: int) -> str:
        return "x".join(str(d) for d in (batch, *(self.chw or ())))

    def profile_shapes(self) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """The optimization profile: (input name, min, opt, max) per dynamic input; what ``build.sh`` passes to
        trtexec and the Python build to ``IOptimizationProfile.set_shape``."""
        if self.profiles:
            return list(self.profiles)
        if not self.dynamic_batch or self.chw is None:
            return []
        c, h, w = self.chw
        return [(self.input_name, (1, c, h, w), (self.opt_batch, c, h, w), (self.max_batch, c, h, w))]


def exporter(artifact: Artifact, out: Path, options) -> Artifact:
    """The format-table entry point; a PyTorch source arrives here already exported to ONNX."""
    return export_tensorrt(artifact, out, precision=options.precision.value if options.precision else None,
                           dynamic_batch=options.dynamic_batch, max_batch=options.max_batch,
                           dla_core=options.dla_core, workspace_mib=options.workspace_mib)


def trtexec_args(s: BuildSettings, *, strongly_typed: bool = True) -> list[str]:
    """The ``trtexec`` arguments (program name first) that build the engine ``s`` describes."""
    args = ["trtexec", f"--onnx={s.onnx}", f"--saveEngine={s.engine}"]
    if s.qdq:
        args += ["--stronglyTyped"] if strongly_typed else ["--int8"]
    elif s.precision == "fp16":
        args.append("--fp16")
    else:
        args.append("--noTF32")
    profile = s.profile_shapes()
    if profile:
        from edgetl.contract_shapes import trtexec_shape_flags

        args += trtexec_shape_flags({k: {name: shapes[i] for name, *shapes in profile}
                                     for i, k in enumerate(("min", "opt", "max"))})
    args += [f"--memPoolSize=workspace:{s.workspace_mib}", f"--timingCacheFile={s.timing_cache}"]
    if s.dla_core is not None:
        args += [f"--useDLACore={s.dla_core}", "--allowGPUFallback"]
    return args


def export_tensorrt(
    artifact: Artifact,
    path: str | Path,
    *,
    precision: str | None = None,
    dynamic_batch: bool = False,
    max_batch: int = 32,
    dla_core: int | None = None,
    workspace_mib: int = 1024,
    build: bool | None = None,
) -> Artifact:
    """Write the bundle directory ``path`` from an ONNX artifact; build the engine too where possible.

    ``precision`` None means fp32, or int8 for a Q/DQ ONNX. ``build`` None builds when TensorRT and a GPU are
    present. Returns the engine artifact (format ``tensorrt``) when built, else the bundle (``tensorrt-bundle``).
    """
    from exporters.onnx import is_qdq

    if artifact.format is not Format.ONNX or artifact.path is None:
        raise ExportError(f"TensorRT export starts from an ONNX file, not a {artifact.format.value} artifact")
    start = time.perf_counter()
    path = Path(path)
    qdq = is_qdq(artifact.path)
    settings = _settings(artifact, path, precision=precision, qdq=qdq, dynamic_batch=dynamic_batch,
                         max_batch=max_batch, dla_core=dla_core, workspace_mib=workspace_mib)
    if path.exists():
        raise ExportError(f"{path} exists; export into a fresh directory")
    path.mkdir(parents=True)
    shutil.copyfile(artifact.path, path / settings.onnx)
    _write_script(path, settings)
    _write_readme(path, settings)
    from dataclasses import replace

    from exporters.base import write_metadata

    write_metadata(replace(artifact, path=path / settings.onnx))
    want_build = tensorrt_available() if build is None else build
    info: dict[str, Any] = {}
    if want_build:
        info = build_engine(path, settings)
    options = {"format": "tensorrt", "precision": settings.precision, "dynamic_batch": settings.dynamic_batch,
               "max_batch": settings.max_batch if settings.dynamic_batch else 1, "dla_core": settings.dla_core,
               "workspace_mib": settings.workspace_mib, "qdq": qdq, "built_here": bool(info)}
    record = StageRecord(stage="export", options=options, seconds=time.perf_counter() - start)
    extra = {
        "precision": settings.precision,
        "dynamic_batch": settings.dynamic_batch,
        "max_batch": settings.max_batch if settings.dynamic_batch else 1,
        "engine": settings.engine,
        "onnx": settings.onnx,
        "parity_proxy": settings.onnx,
        "trtexec": shlex.join(trtexec_args(settings)),
        **({"profile": {n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, lo, opt, hi in settings.profiles}}
           if settings.profiles else {}),
        **info,
    }
    if info:
        return artifact.with_stage(record, path=path / settings.engine, format=Format.TENSORRT, extra=extra)
    return artifact.with_stage(record, path=path, format=Format.TENSORRT_BUNDLE, extra=extra)


def _settings(artifact: Artifact, path: Path, *, precision, qdq, dynamic_batch, max_batch, dla_core,
              workspace_mib) -> BuildSettings:
    name, batch_dim = _onnx_input(artifact.path)
    if precision is None:
        precision = "int8" if qdq else "fp32"
    if qdq and precision != "int8":
        raise ConfigError(f"{artifact.path.name} is explicitly quantized (Q/DQ nodes): its precision is int8; "
                          f"omit --precision or pass int8, not {precision}")
    if precision == "int8" and not qdq:
        raise ConfigError("TensorRT int8 needs an explicitly quantized (Q/DQ) model: run `edgetl quantize` first "
                          "and export its ONNX (trtexec --int8 on an unquantized ONNX uses placeholder scales "
                          "without a calibration cache and gives wrong outputs)")
    if dla_core is not None and precision == "fp32":
        raise ConfigError("DLA runs fp16 or int8 only; pass --precision fp16 (or export a quantized model) with "
                          "--dla-core")
    stem = path.name.removesuffix("_tensorrt") or "model"
    if artifact.input_spec is None and artifact.contract is not None:
        return _contract_settings(artifact, stem, precision=precision, qdq=qdq, dynamic_batch=dynamic_batch,
                                  dla_core=dla_core, workspace_mib=workspace_mib)
    if dynamic_batch and isinstance(batch_dim, int):
        raise ConfigError(f"{artifact.path.name} has a fixed batch of {batch_dim}; export the ONNX with "
                          "--dynamic-batch for a TensorRT optimization profile")
    return BuildSettings(onnx=f"{stem}.onnx", engine=f"{stem}.engine", input_name=name,
                         chw=tuple(artifact.input_spec.shape), precision=precision, qdq=qdq,
                         dynamic_batch=bool(dynamic_batch or not isinstance(batch_dim, int)),
                         max_batch=int(max_batch), dla_core=dla_core, workspace_mib=int(workspace_mib))


def _contract_settings(artifact: Artifact, stem: str, *, precision, qdq, dynamic_batch, dla_core,
                       workspace_mib) -> BuildSettings:
    """Any model by its contract: one optimization profile over every named input (min/opt/max from
    --min-shape/--opt-shape/--max-shape; a static input uses its shape for all three). A dynamic input without
    them is one line naming the flag."""
    from edgetl.contract_shapes import tensorrt_profiles

    contract = artifact.contract
    if dynamic_batch:
        raise ConfigError("--dynamic-batch shapes an image classifier's profile; for a model by its contract give "
                          "--min-shape/--opt-shape/--max-shape NAME:SHAPE per dynamic input")
    profiles: tuple = ()
    if not all(t.is_static for t in contract.inputs):
        p = tensorrt_profiles(contract)
        profiles = tuple((t.name, p["min"][t.name], p["opt"][t.name], p["max"][t.name]) for t in contract.inputs
                         if not t.is_static)  # a static input (a scalar sample rate) needs no profile entry
    return BuildSettings(onnx=f"{stem}.onnx", engine=f"{stem}.engine", input_name=contract.input_names[0], chw=None,
                         precision=precision, qdq=qdq, dynamic_batch=False, max_batch=1, dla_core=dla_core,
                         workspace_mib=int(workspace_mib), profiles=profiles)


def _onnx_input(path: Path) -> tuple[str, int | str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    d0 = inp.type.tensor_type.shape.dim[0]
    return inp.name, (int(d0.dim_value) if d0.HasField("dim_value") else (d0.dim_param or "?"))


# --------------------------------------------------------------------------- the bundle
def _write_script(bundle: Path, s: BuildSettings) -> None:
    primary = shlex.join(trtexec_args(s)[1:])
    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT engine on the target device (engines only run on the GPU and TensorRT version",
        "# that built them). Generated by edgetl; the settings are in the metadata beside the engine.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "# JetPack installs trtexec outside PATH.",
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
    ]
    if s.qdq:
        fallback = shlex.join(trtexec_args(s, strongly_typed=False)[1:])
        lines += [
            "# Q/DQ model: a strongly typed network keeps int8 exactly where the quantizer put it (TensorRT >= 9).",
            'if "$TRTEXEC" --help 2>&1 | grep -q -- "--stronglyTyped"; then',
            f'  exec "$TRTEXEC" {primary} "$@"',
            "fi",
            "# TensorRT 8.x: no strongly typed networks; --int8 honours the Q/DQ scales.",
            f'exec "$TRTEXEC" {fallback} "$@"',
        ]
    else:
        lines.append(f'exec "$TRTEXEC" {primary} "$@"')
    script = bundle / "build.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _write_readme(bundle: Path, s: BuildSettings) -> None:
    if s.profiles:
        shapes = "profile " + "; ".join(f"{n} min {_x(lo)} opt {_x(opt)} max {_x(hi)}" for n, lo, opt, hi in s.profiles)
    elif s.chw is None:
        shapes = "static input shapes"
    else:
        shapes = (f"dynamic batch 1..{s.max_batch} (optimised for {s.opt_batch})" if s.dynamic_batch
                  else f"fixed shape {s.shape(1)}")
    text = (
        f"Run `./build.sh` on the target device to build `{s.engine}` ({s.precision}, {shapes}"
        f"{f', DLA core {s.dla_core} with GPU fallback' if s.dla_core is not None else ''}) from `{s.onnx}` "
        f"with trtexec; `{TIMING_CACHE}` speeds up rebuilds. Then `edgetl eval {s.engine}` or "
        f"`edgetl bench {s.engine}` there.\n"
        "TensorRT 8.5 (JetPack 5) parses ONNX opsets up to 17: if it rejects the model, re-export with --opset 17.\n"
    )
    (bundle / "README.md").write_text(text)


def _x(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# --------------------------------------------------------------------------- the engine, where possible
def tensorrt_available() -> bool:
    """True where ``tensorrt`` imports and a CUDA GPU is visible."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False
    return _gpu_name() is not None


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return name.decode().rstrip("\x00") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return None
    return None


def build_engine(bundle: Path, s: BuildSettings) -> dict[str, Any]:
    """Build ``bundle / s.engine`` through the TensorRT Python API; returns version and GPU facts."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    strongly_typed = s.qdq and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle / s.onnx)):
        errs = [parser.get_error(i) for i in range(parser.num_errors)]
        detail = "; ".join(f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}"
                           if hasattr(e, "node_operator") else str(e) for e in errs)
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {s.onnx}: {detail[:600]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_mib << 20)
    if s.qdq and not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
    elif not s.qdq and s.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif not s.qdq:
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes = s.profile_shapes()
    if shapes:  # IOptimizationProfile.set_shape(input, min, opt, max) per dynamic input, one profile
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in shapes:
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if s.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(s.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = bundle / s.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {s.onnx} (see its log above)")
    tmp = bundle / f".{s.engine}.part"
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, bundle / s.engine)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "gpu": _gpu_name(), "built_with": "tensorrt-python"}
