"""Atomic writes: outputs appear whole under their final name or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "check_output", "final_path", "write_json"]

# atomic_path / atomic_dir write ".NAME.XXXXXXXX.part" beside the output: the name must leave room for that.
_TEMP_OVERHEAD = len("..part") + 8


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; outputs get the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; move it into place only if the block succeeds.

    With ``overwrite`` an existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        if final.exists() and overwrite:
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output(path: str | os.PathLike[str], *, kind: str = "file", overwrite: bool = True,
                 what: str = "-o") -> Path:
    """Check an output path before any work: its name fits the filesystem (with room for the temporary file
    beside it), its nearest existing parent is a writable directory, and what is there is of the right kind.

    ``kind`` is ``"file"`` or ``"dir"``; ``overwrite=False`` refuses an existing output. Raises
    :class:`~edgetl.errors.InputFileError` (exit code 2) naming the path and what to change. Parents that do not
    exist yet are fine: the write creates them.

    Example::

        check_output(args.output, overwrite=args.overwrite)   # before loading models or data
    """
    from edgetl.errors import ConfigError, InputFileError

    if kind not in ("file", "dir"):
        raise ConfigError(f"check_output kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path).expanduser()
    if not str(path) or p.name in ("", ".", ".."):
        raise InputFileError(f"{what} {str(path)!r}: give a {'directory' if kind == 'dir' else 'file'} name")
    anchor = p.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise InputFileError(f"{what} {p}: {anchor} is a file, not a directory; choose another output path")
    name_max = _name_max(anchor)
    for part in p.relative_to(anchor).parts:
        if len(os.fsencode(part)) + _TEMP_OVERHEAD > name_max:
            raise InputFileError(f"{what} {p}: the name {part[:40]}... is {len(os.fsencode(part))} bytes; this "
                                 f"filesystem allows {name_max - _TEMP_OVERHEAD} for an output (shorten it)")
    if not _writable(anchor):
        raise InputFileError(f"{what} {p}: cannot write in {anchor} (permission denied or read-only); choose a "
                             "writable directory")
    if p.exists():
        if kind == "file" and p.is_dir():
            raise InputFileError(f"{what} {p} is a directory; give a file name")
        if kind == "dir" and not p.is_dir():
            raise InputFileError(f"{what} {p} is a file; give a directory")
        if not overwrite:
            raise ConfigError(f"{p} exists; pass --overwrite to replace it")
        if not os.access(p, os.W_OK) or (p.is_dir() and not os.access(p, os.W_OK | os.X_OK)):
            raise InputFileError(f"{what} {p}: exists and is not writable (permission denied)")
    return p


def _writable(directory: Path) -> bool:
    """Really try: permission bits do not tell root, read-only mounts or special filesystems apart."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgetl-probe.", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def final_path(path: str | os.PathLike[str]) -> Path:
    """The path a file recorded *inside* an :func:`atomic_dir` block has once the block succeeded: each
    ``.NAME.XXXXXXXX.part`` component becomes ``NAME``.

    Example::

        final_path("run/stages/.04-bench-ab12.k3j2h1.part/base/model.xml")   # run/stages/04-bench-ab12/base/model.xml
    """
    import re

    parts = [re.sub(r"^\.(.+)\.[A-Za-z0-9_]{8}\.part$", r"\1", part) for part in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically (pretty, UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
