"""One exporter interface, driven by the export table of :mod:`edgetl.formats` (validation, dependencies, dispatch).

Every export target is an :class:`~edgetl.formats.ExportSpec` row (:data:`FORMATS` here, ``EXPORTS`` there, plus
plug-ins from the ``edgetl.exporters`` entry point group): its name, file suffix, the artifact formats it
converts from (a PyTorch artifact reaches ``ort`` and ``tensorrt`` through ONNX), the options that apply to it,
the precisions it can produce and the pip extra that brings its backend. The exporter itself is named as
``"module:function"`` and imported only when that format is used, so ``import exporters`` imports no backend.

An exporter is ``exporter(artifact, out, options) -> Artifact``: it writes the model to ``out`` (a file path with
the format's suffix, or a directory for bundles) and returns the exported artifact, one ``export`` stage further
on. :func:`export` validates everything first (names, options, extras, the output directory), writes every
format into a staging directory, checks each against the source model (:mod:`exporters.parity`) and only then
moves the directory into place. A format that fails does not discard the others: they are delivered, the
manifest records the failure, and :class:`~edgetl.errors.PartialExportError` says which failed and why (when
every format fails, nothing is written and the error is raised as it is).

Example::

    from exporters import export
    onnx_art, ov_art = export(art, ["onnx", "openvino"], "out/", options=ExportOptions(dynamic_batch=True))
    onnx_art.history[-1].metrics["parity"]["max_abs_error"]
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import logging
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ConfigError, EdgetlError, MissingDependencyError, PartialExportError, check_names
from edgetl.formats import EXPORTS as FORMATS
from edgetl.formats import ExportSpec as FormatSpec
from edgetl.formats import Precision, metadata_path, sidecar_payload, write_metadata

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.data import DataSplits

__all__ = [
    "ExportOptions",
    "Exporter",
    "FORMATS",
    "FormatSpec",
    "Precision",
    "export",
    "format_spec",
    "check_request",
    "plan_export",
    "sidecar_payload",
    "write_metadata",
]

log = logging.getLogger(__name__)

MANIFEST = "export.json"
_SCRATCH = ".intermediate"


@dataclass(frozen=True)
class ExportOptions:
    """Options of one export; which of them apply to which format is in :data:`FORMATS`.

    ``precision=None`` means the format's default (fp32, or int8 for an explicitly quantized QDQ ONNX source).
    ``max_batch`` bounds a dynamic batch (TensorRT optimization profile, ExecuTorch memory plan).
    """

    opset: int | None = None
    dynamic_batch: bool = False
    max_batch: int = 32
    precision: Precision | None = None
    dla_core: int | None = None
    workspace_mib: int = 1024
    parity: bool = True

    def __post_init__(self) -> None:
        if self.precision is not None:
            object.__setattr__(self, "precision", Precision.parse(self.precision))
        if self.opset is not None and not 7 <= int(self.opset) <= 30:
            raise ConfigError(f"--opset must be an ONNX opset between 7 and 30, got {self.opset}")
        if int(self.max_batch) < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise ConfigError(f"--dla-core must be a DLA core index (0 or 1 on Jetson AGX/NX), got {self.dla_core}")
        if int(self.workspace_mib) < 1:
            raise ConfigError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExportOptions:
        """Build from a dict (recipe, JSON); a wrong key suggests the nearest option name."""
        check_names(values, [f.name for f in dataclasses.fields(cls)], "export option")
        return cls(**values)

    def given(self) -> set[str]:
        """Names of the options set to something other than their default (parity is not format-specific)."""
        defaults = ExportOptions()
        return {f.name for f in dataclasses.fields(self)
                if f.name != "parity" and getattr(self, f.name) != getattr(defaults, f.name)}

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(self).items()}


class Exporter(Protocol):
    """``exporter(artifact, out, options) -> Artifact``: write ``out`` and return the exported artifact."""

    def __call__(self, artifact: Artifact, out: Path, options: ExportOptions) -> Artifact: ...


def format_spec(name: str) -> FormatSpec:
    """The table row for ``name`` (case-insensitive, plug-ins included); an unknown name suggests the nearest."""
    from edgetl.formats import export_spec

    return export_spec(name)


# --------------------------------------------------------------------------- validation
_CLI_FLAG = {"opset": "--opset", "dynamic_batch": "--dynamic-batch", "max_batch": "--max-batch",
             "precision": "--precision", "dla_core": "--dla-core", "workspace_mib": "--workspace-mib"}


def plan_export(artifact: Artifact, formats: str | Iterable[str], options: ExportOptions) -> list[FormatSpec]:
    """Validate a whole export before any slow step: :func:`check_request`, then what the source allows."""
    specs = check_request(formats, options)
    for spec in specs:
        if artifact.format not in spec.sources():
            raise ConfigError(
                f"format {spec.name!r} cannot be made from a {artifact.format.value} artifact; it takes "
                f"{', '.join(f.value for f in spec.sources())}. Export from the PyTorch model instead"
            )
    if options.precision is Precision.INT8 and artifact.format is Format.TORCH:
        raise ConfigError("export does not quantize: int8 comes from `edgetl quantize`, whose output (a Q/DQ ONNX "
                          "or an int8 model) is then exported; or pick fp32/fp16")
    for spec in specs:
        if spec.via is not None and artifact.format is Format.TORCH:
            check_dependencies(FORMATS[spec.via.value])
    return specs


def check_request(formats: str | Iterable[str], options: ExportOptions) -> list[FormatSpec]:
    """Format names, options, precisions and installed extras: everything that needs no model loaded.

    An option is refused only when it applies to none of the requested formats (``--opset`` with
    ``--format onnx,openvino`` shapes the ONNX and is fine); a precision is refused when a requested format that
    takes ``--precision`` cannot produce it.
    """
    names = [formats] if isinstance(formats, str) else list(formats)
    names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no export format given; valid: {', '.join(FORMATS)}")
    specs: list[FormatSpec] = []
    for n in names:
        spec = format_spec(n)
        if spec not in specs:
            specs.append(spec)
    applicable = set().union(*(s.options for s in specs))
    for opt in sorted(options.given()):
        if opt not in applicable:
            users = [s.name for s in FORMATS.values() if opt in s.options]
            raise ConfigError(
                f"option {_CLI_FLAG.get(opt, opt)} does not apply to {', '.join(s.name for s in specs)}; "
                f"it applies to: {', '.join(users)}"
            )
    if options.precision is not None:
        for spec in specs:
            if "precision" in spec.options and options.precision not in spec.precisions:
                raise ConfigError(
                    f"{spec.name} cannot produce {options.precision.value}; it supports "
                    f"{', '.join(p.value for p in spec.precisions)}"
                    + (" (int8 comes from `edgetl quantize`)" if options.precision is Precision.INT8 else "")
                )
    for spec in specs:
        check_dependencies(spec)
    return specs


def check_dependencies(spec: FormatSpec) -> None:
    """Raise :class:`MissingDependencyError` naming the extra when a backend module is not importable."""
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, spec.extra, f"{spec.name} export")


# --------------------------------------------------------------------------- metadata
def export_record(spec: FormatSpec, options: ExportOptions, *, seconds: float,
                  metrics: dict[str, Any] | None = None, **extra_options: Any) -> StageRecord:
    """The ``export`` stage record: the options that apply to this format, and what was measured."""
    used = {k: v for k, v in options.to_dict().items() if k in spec.options}
    return StageRecord(stage="export", options={"format": spec.name, **used, **extra_options},
                       metrics=dict(metrics or {}), seconds=seconds)


# --------------------------------------------------------------------------- the entry point
@dataclass
class _Session:
    """One export call: the staging directory and intermediates shared between formats."""

    source: Artifact
    stage_dir: Path
    stem: str
    options: ExportOptions
    intermediates: dict[Format, Artifact] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # export target -> file name in the output directory

    def plan_names(self, specs: Sequence[FormatSpec]) -> None:
        """One file name per target: ``STEM.SUFFIX``, or ``STEM_TARGET.SUFFIX`` when two targets share a suffix
        (e.g. ``onnx`` and a plug-in's ``onnx-legacy``); the target named like its format keeps the plain name."""
        taken: set[str] = set()
        for spec in sorted(specs, key=lambda s: s.name != s.format.value):
            plain = f"{self.stem}{spec.suffix}" if spec.suffix else f"{self.stem}_{spec.name}"
            name = plain if plain not in taken else f"{self.stem}_{spec.name}{spec.suffix}"
            self.names[spec.name] = name
            taken.add(name)

    def out_path(self, spec: FormatSpec) -> Path:
        return self.stage_dir / self.names[spec.name]


def export(
    artifact: Artifact,
    formats: str | Sequence[str],
    out_dir: str | Path,
    *,
    options: ExportOptions | Mapping[str, Any] | None = None,
    data: DataSplits | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> list[Artifact]:
    """Export ``artifact`` to each format into ``out_dir`` (written atomically), parity-checked.

    Returns one exported artifact per format, in the order given; each one's last history record is the
    ``export`` stage with the parity metrics. ``data`` gives the parity inputs (default: the dataset recorded
    in the artifact's history, else seeded synthetic images, labelled as such in the metrics).

    Example::

        [onnx_art] = export(load_model("teacher.pt"), "onnx", "out/")
    """
    from edgetl.fileio import atomic_dir, write_json
    from exporters.parity import parity_inputs

    opts = options if isinstance(options, ExportOptions) else ExportOptions.from_mapping(options or {})
    specs = plan_export(artifact, formats, opts)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output directory {out_dir} exists; pass --overwrite (overwrite=True) to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is not a directory; choose another -o")
    if artifact.format is Format.TORCH and artifact.model is not None:
        artifact.model.eval()
    inputs = parity_inputs(artifact, data=data) if opts.parity else None
    stem = name or _stem(artifact)
    with atomic_dir(out_dir, overwrite=overwrite) as stage:
        session = _Session(source=artifact, stage_dir=stage, stem=stem, options=opts)
        session.plan_names(specs)
        # ONNX first when asked for: the ONNX-based formats then reuse the very file that is delivered.
        done, failures, errors = {}, {}, {}
        for spec in sorted(specs, key=lambda s: s.format is not Format.ONNX):
            try:
                done[spec.name] = _export_one(session, spec, inputs)
            except EdgetlError as e:
                if len(specs) == 1:
                    raise
                log.warning("%s export failed: %s", spec.name, e)
                errors[spec.name] = e
                failures[spec.name] = {"error": str(e), "error_type": type(e).__name__,
                                       **({"metrics": e.metrics} if getattr(e, "metrics", None) else {})}
        if not done:  # nothing to deliver: the first failure is the answer, and nothing is written
            raise errors[next(s.name for s in specs if s.name in errors)]
        results = [done[spec.name] for spec in specs if spec.name in done]
        shutil.rmtree(stage / _SCRATCH, ignore_errors=True)
        write_json(stage / MANIFEST, {
            "source": {"name": artifact.name, "format": artifact.format.value, "arch": artifact.arch},
            "options": opts.to_dict(),
            "parity_inputs": inputs.source if inputs is not None else None,
            "exports": [{"format": name, "path": str(a.path.relative_to(stage)),
                         "parity": a.history[-1].metrics.get("parity")} for name, a in done.items()],
            "failed": failures,
        })
        _readable(stage)
    delivered = [_relocate(a, stage, out_dir) for a in results]
    if failures:
        why = "; ".join(f"{name}: {f['error']}" for name, f in failures.items())
        raise PartialExportError(f"{len(failures)} of {len(specs)} formats failed ({why}); the others were written "
                                 f"to {out_dir}", results=delivered, failures=failures)
    return delivered


def _export_one(session: _Session, spec: FormatSpec, inputs) -> Artifact:
    from exporters.parity import check_parity

    source = _source_for(session, spec)
    out = session.out_path(spec)
    start = time.perf_counter()
    exported = spec.load()(source, out, session.options)
    seconds = time.perf_counter() - start
    record = exported.history[-1]
    record.seconds = seconds
    if inputs is not None:
        record.metrics["parity"] = check_parity(session.source, exported, inputs,
                                                precision=Precision(record.options.get("precision", "fp32")))
    write_metadata(exported, metadata_path(exported))
    if spec.format is Format.ONNX:
        session.intermediates[Format.ONNX] = exported
    return exported


def _source_for(session: _Session, spec: FormatSpec) -> Artifact:
    src = session.source
    if src.format in spec.accepts or spec.via is None:
        return src
    if spec.via in session.intermediates:
        return session.intermediates[spec.via]
    via = FORMATS[spec.via.value]
    scratch = session.stage_dir / _SCRATCH
    scratch.mkdir(exist_ok=True)
    art = via.load()(src, scratch / f"{session.stem}{via.suffix}", _only(session.options, via))
    session.intermediates[spec.via] = art
    return art


def _only(options: ExportOptions, spec: FormatSpec) -> ExportOptions:
    """The options with everything that does not apply to ``spec`` reset to its default."""
    defaults = ExportOptions()
    return dataclasses.replace(options, **{k: getattr(defaults, k) for k in options.given() if k not in spec.options})


def _readable(root: Path) -> None:
    """Temporary files and directories are created private (0600/0700); deliverables get the umask's modes."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        executable = p.is_dir() or (p.stat().st_mode & 0o100)
        p.chmod((0o777 if executable else 0o666) & ~mask)


def _relocate(art: Artifact, stage: Path, final: Path) -> Artifact:
    return dataclasses.replace(art, path=final / Path(art.path).relative_to(stage))


def _stem(artifact: Artifact) -> str:
    if artifact.path is not None:
        return Path(artifact.path).stem
    return safe_stem(artifact.arch or "model")


def safe_stem(arch: str) -> str:
    """A file name for a model known only by its architecture: the class of ``module.path:Class`` (a colon in a
    file name reads as ``host:path`` to scp and rsync, so a bundle or a remote bench would go astray), and only
    letters, digits, ``_``, ``-`` and ``.``."""
    import re

    name = arch.rsplit(":", 1)[-1] if ":" in arch else arch
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def registered() -> dict[str, str]:
    """Name -> description of every format (no backend is imported)."""
    return {name: spec.description for name, spec in FORMATS.items()}
