"""The ``package`` stage: a bundle per device profile.

In a recipe it runs after the report (``- package: {devices: [x86-cpu]}``) and packages the recommended
artifact; called as a stage it packages the artifact it is given.

Example::

    bundle_art = package_stage(int8_onnx, PackageConfig(devices=("x86-cpu",)), ctx=StageContext(out_dir=Path("b")))
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, StageRecord
from edgetl.errors import ConfigError
from edgetl.stages import option

__all__ = ["PackageConfig", "package_stage"]


@dataclass(frozen=True)
class PackageConfig:
    """Which device profiles get a bundle (see ``edgetl devices``)."""

    devices: tuple[str, ...] = option(("x86-cpu",), help="Device profiles to package for.")

    def __post_init__(self) -> None:
        devs = (self.devices,) if isinstance(self.devices, str) else tuple(self.devices)
        if not devs:
            raise ConfigError("package needs at least one device profile, e.g. devices: [x86-cpu]")
        from benchmarks.profiles import load_profile

        for d in devs:
            load_profile(str(d))  # an unknown profile is refused with the nearest names, before any work
        object.__setattr__(self, "devices", tuple(str(d) for d in devs))


def package_stage(artifact: Artifact, config: PackageConfig | None = None, *, data: Any = None,
                  ctx: Any = None) -> Artifact:
    """Bundle ``artifact`` (a file) for each device into ``ctx.out_dir/bundle-DEVICE``; returns the artifact
    with a ``package`` record listing the bundles."""
    from edgetl.package import package

    config = config or PackageConfig()
    if artifact.path is None:
        raise ConfigError("package takes a model file (save or export the model first)")
    out_dir = Path(ctx.out_dir) if ctx is not None and ctx.out_dir is not None else Path(
        tempfile.mkdtemp(prefix="edgetl-package-"))
    name = getattr(data, "name", None) if data is not None else None
    bundles = []
    for device in config.devices:
        b = package(artifact.path, out_dir / f"bundle-{device}", device=device, data=name, overwrite=True)
        bundles.append({"device": device, "path": str(b.path)})
    return artifact.with_stage(StageRecord("package", {"devices": list(config.devices)}, {"bundles": bundles}))
