"""Which bytes were measured: the sha256 of an artifact's file and the companions a runtime reads with it.

A path is not an identity: a rebuilt ``model.onnx`` at the same path is another model. Each measured result
records this hash (``artifact_meta["sha256"]``), so an earlier measurement of the same content can be found again
in the results store (:meth:`benchmarks.store.ResultsStore.clean_records`).

Example::

    content_sha256("run/stages/03-export/model.xml")     # .xml and .bin together; the edgetl sidecar left out
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["content_sha256"]

_CHUNK = 1 << 20


def _feed(h, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def content_sha256(path: str | Path | None) -> str | None:
    """sha256 over the model file and its companions (OpenVINO ``.bin``, ONNX external data), or over every file
    of a bundle directory by relative path; ``None`` for no path or a path that does not exist. The edgetl
    sidecar (metadata, not read by the runtime) is not part of it."""
    from edgetl.formats import SIDECAR_SUFFIX, companion_files

    if path is None or str(path) == "":
        return None
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            h.update(str(f.relative_to(p)).encode() + b"\0")
            _feed(h, f)
        return h.hexdigest()
    if not p.is_file():
        return None
    for f in companion_files(p):
        if f.name.endswith(SIDECAR_SUFFIX):
            continue
        h.update(f.suffix.encode() + b"\0")  # which part is which: .xml and .bin are not interchangeable
        _feed(h, f)
    return h.hexdigest()
