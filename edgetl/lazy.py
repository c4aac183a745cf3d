"""Lazy package exports: a package's public names, each imported from its module on first use.

A stage package (``edgetl.prune``, ``edgetl.distill``) re-exports its names flat, but importing it must not
import torch or torch-pruning: the CLI reads ``edgetl.prune.config`` to build its options, and ``import edgetl``
stays lean. The package lists where each name lives; this module makes the module ``__getattr__`` (PEP 562)
that imports it when first asked for, and caches it in the package.

Example::

    # edgetl/prune/__init__.py
    from edgetl.lazy import lazy_exports

    __all__, __getattr__, __dir__ = lazy_exports(globals(), {
        "edgetl.prune.config": ("PruneConfig", "Scope"),
        "edgetl.prune.pruner": ("prune",),
    })
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(namespace: MutableMapping[str, Any], table: Mapping[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``, from a table
    ``{"module": ("Name", ...)}``. A name listed twice is a mistake in the table and raises ``ValueError``."""
    where: dict[str, str] = {}
    for module, names in table.items():
        for name in names:
            if name in where:
                raise ValueError(f"{name} is exported from both {where[name]} and {module}")
            where[name] = module
    package = namespace.get("__name__", "?")

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value  # later lookups find it in the package and never come here again
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return sorted(where), __getattr__, __dir__
