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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.artifact import Artifact
from edgetl.errors import ConfigError
from edgetl.multi_target import MultiTargetConfig
from edgetl.stages import StageContext
from exporters.base import ExportOptions, check_request, export, format_spec

__all__ = ["ExportConfig", "export_stage", "exports_of"]


@dataclass(frozen=True)
class ExportConfig(MultiTargetConfig):
    """Which formats to export to (the first is the primary export) and the options of the export."""

    TARGETS, OPTIONS = "formats", "options"
    EMPTY = "export needs at least one format, e.g. formats: [onnx]"

    formats: tuple[str, ...] = ("onnx",)
    options: ExportOptions = field(default_factory=ExportOptions)
    name: str | None = None  # file stem of the exports (default: the source's)

    @classmethod
    def split_targets(cls, value: str | Sequence[str]) -> tuple[str, ...]:
        """Names, each item possibly comma-separated (``"onnx, openvino"``)."""
        items = [value] if isinstance(value, str) else list(value)
        return tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())

    @classmethod
    def check_target(cls, name: str) -> None:
        format_spec(name)  # an unknown name suggests the nearest

    def check_environment(self) -> None:
        """Names, options, precisions and installed extras: what needs no model loaded."""
        check_request(list(self.formats), self.options)


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
