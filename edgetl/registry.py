"""Name -> piece, for every extension point: built-in tables first, then other packages' entry points.

Four kinds, each with its entry point group (a package adds a piece with a line in its ``entry_points.txt``,
no edit to edgetl):

=========  ====================  ===============================================================================
kind       group                 the entry point names
=========  ====================  ===============================================================================
criterion  ``edgetl.criteria``   a torch-pruning ``Importance`` class (``__call__(group) -> per-channel scores``)
                                 or an :class:`edgetl.prune.criteria.Criterion` subclass
exporter   ``edgetl.exporters``  an :class:`edgetl.formats.ExportSpec` row, whose ``exporter`` is
                                 ``"module:function(artifact, out, options) -> Artifact"``
runtime    ``edgetl.runtimes``   an :class:`edgetl.runtimes.Runtime` subclass with ``formats``
quantizer  ``edgetl.quantizers`` an :class:`edgetl.quantize.backends.QuantizerBackend` subclass
=========  ====================  ===============================================================================

Listing reads only metadata (nothing is imported); a piece is imported when it is used. A plug-in may not
replace a built-in of the same name (it is listed, marked ``shadowed``, and not used).

Example::

    from edgetl.registry import criteria
    criteria().names()            # ['l1', 'l2', 'lrp', 'random', 'taylor', ...plug-ins]
    criteria().load("lrp")        # the class
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgetl.errors import ConfigError, UnknownNameError

__all__ = ["GROUPS", "Entry", "Registry", "criteria", "exporters", "quantizers", "registries", "runtimes"]

log = logging.getLogger(__name__)

BUILTIN = "built-in"


@dataclass(frozen=True)
class Entry:
    """One registered piece: where it is (``module:attr``, or the object itself) and where it came from."""

    kind: str
    name: str
    target: Any
    origin: str  # "built-in", or "entry point NAME = TARGET of DIST VERSION"
    shadowed: bool = False  # a plug-in with a built-in's name: listed, never used

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN

    def load(self) -> Any:
        from edgetl.formats import load_entry

        if not isinstance(self.target, str):
            return self.target
        try:
            return load_entry(self.target)
        except (ImportError, AttributeError) as e:
            if self.builtin:
                raise
            raise ConfigError(f"{self.kind} plug-in {self.name!r} ({self.origin}) cannot be imported: "
                              f"{type(e).__name__}: {e}; fix or uninstall that package") from None

    def to_dict(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, str) else f"{type(self.target).__name__} {self.name!r}"
        return {"kind": self.kind, "name": self.name, "target": target, "origin": self.origin,
                "shadowed": self.shadowed}


@functools.lru_cache(maxsize=32)
def _entry_points(group: str, path_key: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """(name, value, distribution) of every entry point of ``group`` on the given sys.path (metadata only)."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"
        out.append((ep.name, ep.value, where))
    return tuple(out)


class Registry:
    """The pieces of one kind: ``builtins()`` (name -> target, read when first needed) plus entry points."""

    def __init__(self, kind: str, group: str, builtins: Callable[[], Mapping[str, Any]],
                 check: Callable[[str, Any], Any] | None = None, *, noun: str | None = None) -> None:
        self.kind, self.group, self._builtins, self._check = kind, group, builtins, check
        self.noun = noun or kind  # what error messages call it

    def entries(self) -> dict[str, Entry]:
        """Every piece by name (built-ins first); shadowed plug-ins are under ``NAME (DIST)``."""
        out = {name.lower(): Entry(self.kind, name.lower(), t, BUILTIN) for name, t in self._builtins().items()}
        for name, value, dist in _entry_points(self.group, tuple(sys.path)):
            key = name.strip().lower()
            origin = f"entry point {name} = {value} of {dist}"
            if key in out:
                out[f"{key} ({dist})"] = Entry(self.kind, key, value, origin, shadowed=True)
                log.warning("%s %r from %s is ignored: a built-in has that name", self.noun, key, dist)
                continue
            out[key] = Entry(self.kind, key, value, origin)
        return out

    def names(self) -> list[str]:
        return sorted(n for n, e in self.entries().items() if not e.shadowed)

    def get(self, name: str) -> Entry:
        entries = {n: e for n, e in self.entries().items() if not e.shadowed}
        key = str(name).strip().lower()
        if key not in entries:
            raise UnknownNameError(self.noun, str(name), entries)
        return entries[key]

    def load(self, name: str) -> Any:
        """The piece ``name``, imported (and checked, for plug-ins) now."""
        entry = self.get(name)
        obj = entry.load()
        if self._check is not None and not entry.builtin:
            obj = self._check(entry.name, obj)
        return obj

    def __contains__(self, name: object) -> bool:
        return str(name).strip().lower() in self.names()


# --------------------------------------------------------------------------- the four kinds
GROUPS = {"criterion": "edgetl.criteria", "exporter": "edgetl.exporters", "runtime": "edgetl.runtimes",
          "quantizer": "edgetl.quantizers"}


def _criteria() -> dict[str, str]:
    from edgetl.prune.criteria import CRITERIA

    return {n: f"{c.__module__}:{c.__qualname__}" for n, c in CRITERIA.items()}


def _exports() -> dict[str, Any]:
    from edgetl.formats import EXPORTS

    return dict(EXPORTS)


def _runtimes() -> dict[str, str]:
    from edgetl.runtimes import RUNTIMES

    return {n: s.entry for n, s in RUNTIMES.items()}


def _quantizers() -> dict[str, str]:
    from edgetl.quantize.backends import QUANTIZERS

    return dict(QUANTIZERS)


def _check_exporter(name: str, obj: Any) -> Any:
    from edgetl.formats import ExportSpec

    if not isinstance(obj, ExportSpec):
        raise ConfigError(f"exporter plug-in {name!r} must name an edgetl.formats.ExportSpec row, not a "
                          f"{type(obj).__name__}")
    if obj.name != name:
        raise ConfigError(f"exporter plug-in {name!r} names an ExportSpec called {obj.name!r}; make them equal")
    return obj


def _check_class(base: str) -> Callable[[str, Any], Any]:
    def check(name: str, obj: Any) -> Any:
        from edgetl.formats import load_entry

        want = load_entry(base)
        if not (isinstance(obj, type) and issubclass(obj, want)):
            raise ConfigError(f"{name!r} must name a subclass of {base.replace(':', '.')}, not {obj!r}")
        return obj

    return check


def _check_criterion(name: str, obj: Any) -> Any:
    import torch_pruning as tp

    if not (isinstance(obj, type) and issubclass(obj, tp.importance.Importance)):
        raise ConfigError(f"criterion plug-in {name!r} must name a torch_pruning Importance subclass, not {obj!r}")
    return obj


@functools.cache
def criteria() -> Registry:
    return Registry("criterion", GROUPS["criterion"], _criteria, _check_criterion)


@functools.cache
def exporters() -> Registry:
    return Registry("exporter", GROUPS["exporter"], _exports, _check_exporter, noun="export format")


@functools.cache
def runtimes() -> Registry:
    return Registry("runtime", GROUPS["runtime"], _runtimes, _check_class("edgetl.runtimes.base:Runtime"))


@functools.cache
def quantizers() -> Registry:
    return Registry("quantizer", GROUPS["quantizer"], _quantizers,
                    _check_class("edgetl.quantize.backends:QuantizerBackend"), noun="quantization backend")


def registries() -> dict[str, Registry]:
    """Every registry by kind (what ``edgetl plugins`` lists)."""
    return {"criterion": criteria(), "exporter": exporters(), "runtime": runtimes(), "quantizer": quantizers()}
