"""Every error edgetl raises on purpose.

Exception tree::

    EdgetlError                      exit code 1 unless stated
    ├── ConfigError                  a wrong option, name or value (exit 2)
    │   └── UnknownNameError         a name not in a closed set; suggests the nearest
    ├── InputFileError               a missing, unreadable or wrong-kind file (exit 2)
    │   └── UnsafeCheckpointError    a pickled module refused without ``--unsafe-pickle``
    ├── DataError                    a dataset that cannot be used as asked (exit 2)
    ├── MissingDependencyError       an optional backend is not installed; names the extra
    ├── ModelError                   a model that cannot go through a stage
    ├── ExportError                  a format conversion failed
    │   └── PartialExportError       some formats failed; the others were delivered (``results``, ``failures``)
    ├── ParityError                  an export computes something else than its source
    ├── BudgetError                  an accuracy or latency budget cannot be met
    └── RemoteError                  a board that cannot be reached, verified, or that dropped mid-run

Messages say what failed, what was given, what is valid and how to fix it, on one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BudgetError",
    "ConfigError",
    "DataError",
    "EdgetlError",
    "ExportError",
    "InputFileError",
    "MissingDependencyError",
    "ModelError",
    "ParityError",
    "PartialExportError",
    "RemoteError",
    "UnknownNameError",
    "UnsafeCheckpointError",
    "check_names",
    "closest",
]


class EdgetlError(Exception):
    """Base of all edgetl errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(EdgetlError, ValueError):
    exit_code = 2


def closest(name: str, valid: Iterable[str], n: int = 1) -> list[str]:
    """The valid names nearest to ``name`` (case-insensitive), best first."""
    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


class UnknownNameError(ConfigError, KeyError):
    """A name outside a closed set: the message suggests the nearest valid name."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        valid = sorted(valid)
        near = closest(name, valid)
        msg = f"unknown {kind} {name!r}"
        msg += f"; did you mean {near[0]!r}?" if near else "."
        msg += f" Valid: {', '.join(valid)}." if len(valid) <= 40 else f" ({len(valid)} valid names.)"
        if hint:
            msg += f" {hint}"
        super().__init__(msg)
        self.kind, self.name, self.valid, self.suggestion = kind, name, valid, (near[0] if near else None)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check_names(given: Iterable[str], valid: Iterable[str], kind: str, *, hint: str = "") -> None:
    """Raise :class:`UnknownNameError` for the first of ``given`` (a mapping's keys, say) outside ``valid``."""
    valid = list(valid)
    for name in given:
        if name not in valid:
            raise UnknownNameError(kind, str(name), valid, hint=hint)


class InputFileError(EdgetlError):
    exit_code = 2


class UnsafeCheckpointError(InputFileError):
    pass


class DataError(EdgetlError):
    exit_code = 2  # the user's data: the same rule as a bad model file


class MissingDependencyError(EdgetlError, ImportError):
    """An optional backend is missing; the message names the pip extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is not installed{what}; install it with: pip install 'edgetl[{extra}]'"
        )
        self.package, self.extra = package, extra


class ModelError(EdgetlError):
    pass


class ExportError(EdgetlError):
    pass


class ParityError(ExportError):
    """The exported artifact's outputs differ from the source model's beyond the thresholds."""

    def __init__(self, message: str, *, metrics: dict | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


class PartialExportError(ExportError):
    """Some formats of one export failed: ``results`` are the delivered artifacts, ``failures`` format -> error."""

    def __init__(self, message: str, *, results: list | None = None, failures: dict | None = None) -> None:
        super().__init__(message)
        self.results = list(results or [])
        self.failures = dict(failures or {})


class BudgetError(EdgetlError):
    pass


class RemoteError(EdgetlError):
    """A remote board over SSH: unreachable, host key not verified, runtime missing, or dropped mid-run."""
