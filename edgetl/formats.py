"""ONE table of formats: what each artifact format is on disk, what runs it, what exports it.

Two tables, both plain data (no backend is imported to read them):

* :data:`FORMAT_INFO`, one :class:`FormatInfo` per :class:`~edgetl.artifact.Format`: file suffixes, companion
  files, the default runtime, the function that embeds edgetl's metadata inside the file, the parity proxy (what
  runs here in its place: a TensorRT engine or bundle is checked through the ONNX it is built from) and the pip
  extra that provides it. Loaders, runtimes, parity, metadata, sizes and quantize suffixes read it.
* :data:`EXPORTS`, one :class:`ExportSpec` per export target (``edgetl export --format NAME``): the format it
  produces, what it converts from, its options and precisions, its extra, and the exporter as
  ``"module:function"``. Core and stage code reach the exporters only through these strings.

Plug-in exporters add :class:`ExportSpec` rows through the ``edgetl.exporters`` entry point group
(:mod:`edgetl.registry`).

Example::

    format_info(Format.OPENVINO).companions          # ('.bin',)
    export_spec("onnx").load()                       # the exporter function, imported now
    size_on_disk(Path("model.xml"))                  # .xml + .bin bytes
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, Format
from edgetl.choice import Choice

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

__all__ = ["EXPORTS", "FORMAT_INFO", "SIDECAR_SUFFIX", "ExportSpec", "FormatInfo", "Precision", "artifact_size",
           "companion_files", "export_function",
           "export_spec", "format_for_suffix", "format_info", "load_entry", "metadata_path", "sidecar_payload", "size_on_disk",
           "write_metadata"]

SIDECAR_SUFFIX = ".edgetl.json"  # NAME.edgetl.json beside an exported file: its edgetl metadata


class Precision(Choice):
    """The arithmetic a model is made to run in (exports, quantization, device profiles, bench results)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


def load_entry(target: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted) and return the attribute."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class FormatInfo:
    """What one artifact format is: files, runtime, metadata, parity proxy, extra."""

    format: Format
    suffixes: tuple[str, ...]  # file suffixes; the first is the one written. () for a directory bundle
    companions: tuple[str, ...] = ()  # files beside it that belong to it: path.with_suffix(c)
    runtime: str | None = None  # the runtime that runs it by default (None: nothing runs it in-process)
    embed: str | None = None  # "module:function(path, payload)" that embeds the metadata inside the file
    parity_proxy: Format | None = None  # what runs here in its place; its file is named by extra["parity_proxy"]
    runs_here: str | None = None  # "module:function() -> bool" when the runtime needs hardware to check first
    extra: str | None = None  # pip install 'edgetl[EXTRA]'
    file: bool = True  # loaded from a file by its suffix (not the PyTorch formats, not a bundle directory)

    @property
    def suffix(self) -> str:
        return self.suffixes[0] if self.suffixes else ""


FORMAT_INFO: dict[Format, FormatInfo] = {i.format: i for i in (
    FormatInfo(Format.TORCH, (".pt", ".pth"), runtime="torch", file=False),
    FormatInfo(Format.TORCHSCRIPT, (".pt",), file=False),
    FormatInfo(Format.EXPORTED_PROGRAM, (".pt2",)),
    FormatInfo(Format.ONNX, (".onnx",), (".onnx.data", ".data"), runtime="onnxruntime",
               embed="exporters.onnx:embed_metadata", extra="onnx"),
    FormatInfo(Format.OPENVINO, (".xml",), (".bin",), runtime="openvino", extra="openvino"),
    FormatInfo(Format.ORT, (".ort",), runtime="onnxruntime", extra="onnx"),
    FormatInfo(Format.EXECUTORCH, (".pte",), runtime="executorch", extra="mobile"),
    FormatInfo(Format.TFLITE, (".tflite",), runtime="litert", extra="mobile"),
    FormatInfo(Format.TENSORRT, (".engine", ".plan"), runtime="tensorrt", parity_proxy=Format.ONNX,
               runs_here="exporters.tensorrt:tensorrt_available", extra="tensorrt"),
    FormatInfo(Format.TENSORRT_BUNDLE, (), parity_proxy=Format.ONNX, extra="tensorrt", file=False),
)}


def format_info(fmt: Format | str) -> FormatInfo:
    return FORMAT_INFO[Format.parse(fmt)]


def format_for_suffix(suffix: str) -> Format | None:
    """The file format a suffix names (``.onnx`` -> ONNX), or None for PyTorch files and unknown suffixes."""
    s = suffix.lower()
    return next((i.format for i in FORMAT_INFO.values() if i.file and s in i.suffixes), None)


def runs_here(fmt: Format) -> bool:
    """Whether a runtime here runs ``fmt`` itself (not through its parity proxy)."""
    info = FORMAT_INFO[fmt]
    if info.runtime is None:
        return False
    return bool(load_entry(info.runs_here)()) if info.runs_here else True


def companion_files(path: str | Path) -> list[Path]:
    """The files that travel with a model file: itself, its edgetl sidecar and its format's companions that exist."""
    path = Path(path)
    fmt = format_for_suffix(path.suffix)
    extra = [path.with_name(path.name + SIDECAR_SUFFIX),
             *(path.with_suffix(c) for c in (FORMAT_INFO[fmt].companions if fmt is not None else ()))]
    return [path, *(c for c in extra if c.exists())]


def size_on_disk(path: str | Path) -> int | None:
    """Bytes of a model file with its companions (OpenVINO .bin, ONNX external data), or of a bundle directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if not path.exists():
        return None
    return sum(p.stat().st_size for p in companion_files(path) if not p.name.endswith(SIDECAR_SUFFIX))


def artifact_size(artifact: Artifact, source_path: Path | None = None) -> int | None:
    """Bytes on disk of the artifact's file (with companions), else of its in-memory weights."""
    path = artifact.path or source_path
    if path is None:
        if artifact.model is None:
            return None
        return int(sum(t.numel() * t.element_size() for t in artifact.model.state_dict().values()))
    return size_on_disk(path)


# --------------------------------------------------------------------------- metadata
def sidecar_payload(artifact: Artifact) -> dict[str, Any]:
    """What ``NAME.edgetl.json`` holds; :func:`edgetl.models.load_model` reads it back."""
    return {**artifact.metadata(), "extra": artifact.extra}


def metadata_path(artifact: Artifact) -> Path:
    """Where an artifact's sidecar goes: beside its file, or for a bundle beside the engine its build script makes
    (``NAME.engine.edgetl.json``, which is how :func:`edgetl.models.load_model` recognises the bundle)."""
    path = Path(artifact.path)
    return path / artifact.extra["engine"] if path.is_dir() and "engine" in artifact.extra else path


def write_metadata(artifact: Artifact, path: Path | None = None) -> Path:
    """Write the sidecar of an exported file, and embed the metadata in the file where its format can hold it."""
    from edgetl.fileio import write_json

    path = Path(path or artifact.path)
    payload = sidecar_payload(artifact)
    fmt = format_for_suffix(path.suffix)
    embed = FORMAT_INFO[fmt].embed if fmt is not None else None
    if embed:
        load_entry(embed)(path, payload)
    return write_json(path.with_name(path.name + SIDECAR_SUFFIX), payload)


# --------------------------------------------------------------------------- export targets
@dataclass(frozen=True)
class ExportSpec:
    """One export target (``edgetl export --format NAME``); the exporter is ``exporter(artifact, out, options)``."""

    name: str
    format: Format  # what it produces
    suffix: str  # file suffix, or "" for a directory bundle
    accepts: tuple[Format, ...]  # artifact formats the exporter converts directly
    via: Format | None  # what a PyTorch source is converted to first, if it is not accepted directly
    options: frozenset[str]
    precisions: tuple[Precision, ...]
    extra: str  # pip install 'edgetl[EXTRA]'
    requires: tuple[str, ...]  # importable modules the exporter needs
    exporter: str  # "module:function"
    description: str = ""

    @property
    def module(self) -> str:
        return self.exporter.partition(":")[0]

    def sources(self) -> tuple[Format, ...]:
        return (*self.accepts, Format.TORCH) if self.via is not None else self.accepts

    def load(self) -> Callable[..., Artifact]:
        return load_entry(self.exporter)

    def function(self, name: str) -> Callable[..., Any]:
        """Another function of the exporter's module (e.g. ``export_onnx``), imported now."""
        return getattr(importlib.import_module(self.module), name)


_ALL = Precision.FP32, Precision.FP16, Precision.INT8

EXPORTS: dict[str, ExportSpec] = {s.name: s for s in (
    ExportSpec("onnx", Format.ONNX, ".onnx", (Format.TORCH,), None, frozenset({"opset", "dynamic_batch"}),
               (Precision.FP32,), "onnx", ("onnx", "onnxscript", "onnxslim"), "exporters.onnx:exporter",
               "ONNX via torch.onnx (dynamo, TorchScript fallback), simplified and checked"),
    ExportSpec("openvino", Format.OPENVINO, ".xml", (Format.TORCH, Format.ONNX), None,
               frozenset({"dynamic_batch", "precision"}), (Precision.FP32, Precision.FP16), "openvino", ("openvino",),
               "exporters.openvino:exporter", "OpenVINO IR (.xml + .bin), static input shape unless --dynamic-batch"),
    ExportSpec("ort", Format.ORT, ".ort", (Format.ONNX,), Format.ONNX, frozenset({"opset", "dynamic_batch"}),
               (Precision.FP32,), "onnx", ("onnx", "onnxruntime"), "exporters.ort:exporter",
               "ONNX Runtime's ORT format for mobile / minimal builds"),
    ExportSpec("executorch", Format.EXECUTORCH, ".pte", (Format.TORCH,), None, frozenset({"dynamic_batch", "max_batch"}),
               (Precision.FP32,), "mobile", ("executorch",), "exporters.executorch:exporter",
               "ExecuTorch program lowered to XNNPACK"),
    ExportSpec("tensorrt", Format.TENSORRT_BUNDLE, "", (Format.ONNX,), Format.ONNX,
               frozenset({"opset", "dynamic_batch", "max_batch", "precision", "dla_core", "workspace_mib"}), _ALL,
               "tensorrt", ("onnx",), "exporters.tensorrt:exporter",
               "TensorRT engine where TensorRT and a GPU exist, else a trtexec build bundle"),
)}


def export_spec(name: str) -> ExportSpec:
    """The export target ``name`` (case-insensitive; plug-ins included); a wrong name suggests the nearest."""
    from edgetl.registry import exporters

    return exporters().load(str(name).strip().lower())


def export_function(target: str, name: str) -> Callable[..., Any]:
    """A function of export target ``target``'s module, imported now (``export_function("onnx", "export_onnx")``)."""
    return EXPORTS[target].function(name)
