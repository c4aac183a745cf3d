"""Structured pruning with relevance (LRP) and classic criteria; torch-pruning does the channel surgery.

Example::

    from edgetl.prune import PruneConfig, prune
    small = prune(teacher, PruneConfig(criterion="lrp", ratio=0.5), data=splits)

Names are imported on first use, so ``edgetl.prune.config`` (what the CLI reads) imports no torch-pruning.
"""

from edgetl.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
    "edgetl.prune.budget": ("Allocation", "GroupScores", "LatencyFit", "LatencyModel", "allocate", "fit_latency"),
    "edgetl.prune.criteria": ("CRITERIA", "Criterion", "Normalization", "make_criterion"),
    "edgetl.prune.flops": ("ModelCost", "count_flops", "count_params", "layer_widths", "model_cost"),
    "edgetl.prune.config": ("LayerFilter", "PruneConfig", "Recovery", "Scope", "layers_matching"),
    "edgetl.prune.pruner": ("prune",),
    "edgetl.prune.surgery": ("PrunePlan", "prune_model"),
    "edgetl.prune.relevance": ("Composite", "ReferenceSet", "RelevanceResult", "reference_set", "relevance_scores"),
})
