"""Structured pruning with relevance (LRP) and classic criteria; torch-pruning does the channel surgery.

Example::

    from edgetl.prune import PruneConfig, prune
    small = prune(teacher, PruneConfig(criterion="lrp", ratio=0.5), data=splits)
"""

from edgetl.prune.budget import Allocation, GroupScores, LatencyFit, LatencyModel, allocate, fit_latency
from edgetl.prune.criteria import CRITERIA, Criterion, Normalization, make_criterion
from edgetl.prune.flops import ModelCost, count_flops, count_params, layer_widths, model_cost
from edgetl.prune.pruner import LayerFilter, PruneConfig, PrunePlan, Scope, layers_matching, prune, prune_model
from edgetl.prune.relevance import Composite, ReferenceSet, RelevanceResult, reference_set, relevance_scores

__all__ = [
    "CRITERIA",
    "Allocation",
    "GroupScores",
    "LatencyFit",
    "LatencyModel",
    "allocate",
    "fit_latency",
    "Composite",
    "Criterion",
    "LayerFilter",
    "ModelCost",
    "Normalization",
    "PruneConfig",
    "PrunePlan",
    "ReferenceSet",
    "RelevanceResult",
    "Scope",
    "count_flops",
    "count_params",
    "layer_widths",
    "layers_matching",
    "make_criterion",
    "model_cost",
    "prune",
    "prune_model",
    "reference_set",
    "relevance_scores",
]
