"""Structured pruning with relevance (LRP) and classic criteria; torch-pruning does the channel surgery.

Example::

    from edgetl.prune import PruneConfig, prune
    small = prune(teacher, PruneConfig(criterion="lrp", ratio=0.5), data=splits)

Names are imported on first use, so ``edgetl.prune.config`` (what the CLI reads) imports no torch-pruning.
"""

import importlib
from typing import Any

_EXPORTS = {
    "edgetl.prune.budget": ("Allocation", "GroupScores", "LatencyFit", "LatencyModel", "allocate", "fit_latency"),
    "edgetl.prune.criteria": ("CRITERIA", "Criterion", "Normalization", "make_criterion"),
    "edgetl.prune.flops": ("ModelCost", "count_flops", "count_params", "layer_widths", "model_cost"),
    "edgetl.prune.config": ("LayerFilter", "PruneConfig", "Recovery", "Scope", "layers_matching"),
    "edgetl.prune.pruner": ("prune",),
    "edgetl.prune.surgery": ("PrunePlan", "prune_model"),
    "edgetl.prune.relevance": ("Composite", "ReferenceSet", "RelevanceResult", "reference_set", "relevance_scores"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
