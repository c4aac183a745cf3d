"""The export stage: ``export_stage(artifact, ExportConfig(...), *, data=None, ctx=None) -> Artifact``.

:func:`exporters.base.export` stays the multi-format API (one call, several formats, a list back). The stage
wraps it in the shape every stage has: its config owns the formats and the :class:`ExportOptions`, the files go
to ``ctx.out_dir`` (or ``ctx.output``, a directory), and it returns the first format's artifact, the primary
export; every export of the call is listed in its ``extra["exports"]`` and loaded again by :func:`exports_of`.

Example::

    onnx = export_stage(art, ExportConfig(formats=("onnx", "openvino")), ctx=StageContext(out_dir=Path("out")))
    onnx_art, ir_art = exports_of(onnx)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact
from edgetl.errors import ConfigError
from edgetl.stages import StageContext
from exporters.base import ExportOptions, check_request, export, format_spec

__all__ = ["ExportConfig", "export_stage", "exports_of"]


def _names(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = [formats] if isinstance(formats, str) else list(formats)
    return tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())


@dataclass(frozen=True)
class ExportConfig:
    """Which formats to export to (the first is the primary export) and the options of the export."""

    formats: tuple[str, ...] = ("onnx",)
    options: ExportOptions = field(default_factory=ExportOptions)
    name: str | None = None  # file stem of the exports (default: the source's)

    def __post_init__(self) -> None:
        names = _names(self.formats)
        if not names:
            raise ConfigError("export needs at least one format, e.g. formats: [onnx]")
        for n in names:
            format_spec(n)  # an unknown name suggests the nearest
        object.__setattr__(self, "formats", names)
        if not isinstance(self.options, ExportOptions):
            object.__setattr__(self, "options", ExportOptions.from_mapping(dict(self.options)))

    @classmethod
    def option_names(cls) -> list[str]:
        """The keys of a recipe's export stage: ``formats`` and the export options, side by side."""
        return ["formats", *(f.name for f in dataclasses.fields(ExportOptions))]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ExportConfig:
        opts = dict(options)
        formats = opts.pop("formats", cls.formats)
        return cls(formats=formats, options=ExportOptions.from_mapping(opts))

    def check_environment(self) -> None:
        """Names, options, precisions and installed extras: what needs no model loaded."""
        check_request(list(self.formats), self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"formats": list(self.formats), **self.options.to_dict(), "name": self.name}


def export_stage(artifact: Artifact, config: ExportConfig | None = None, *, data=None,
                 ctx: StageContext | None = None) -> Artifact:
    """Export ``artifact`` to every format of ``config`` into ``ctx.out_dir``; returns the primary export."""
    config = config or ExportConfig()
    ctx = ctx or StageContext()
    out_dir = ctx.out_dir or ctx.output
    if out_dir is None:
        raise ConfigError("the export stage writes a directory: give ctx=StageContext(out_dir=...)")
    with ctx.reporting():
        arts = export(artifact, list(config.formats), out_dir, options=config.options, data=data,
                      overwrite=ctx.overwrite, name=config.name)
    listing = [{"format": a.format.value, "path": str(a.path)} for a in arts]
    primary = arts[0]
    return dataclasses.replace(primary, extra={**primary.extra, "exports": listing})


def exports_of(artifact: Artifact) -> list[Artifact]:
    """Every export made with ``artifact`` by :func:`export_stage` (itself first), loaded from their files."""
    from edgetl.models import load_model

    listing = artifact.extra.get("exports")
    if not listing:
        return [artifact]
    return [artifact if Path(item["path"]) == Path(artifact.path) else load_model(item["path"]) for item in listing]
