"""The prune reference set is bounded by a total budget: samples_per_class of 1,000 classes is not asked for."""

from __future__ import annotations

import dataclasses

import pytest
import torch


def _relabelled(split, classes: int):
    """The same real images (sklearn digits) spread over ``classes`` labels, as a 1,000-class split would be."""
    from edgetl.data import ImageSet

    return ImageSet(split.images, torch.arange(len(split)) % classes)


def test_1000_classes_are_bounded_by_the_budget(digits):
    from edgetl.artifact import InputSpec
    from edgetl.prune.relevance import REFERENCE_BUDGET, reference_set

    spec = InputSpec(shape=(3, 16, 16), source_channels=1)
    split = _relabelled(digits.train, 1000)  # 1,257 images: 1 or 2 per class
    ref = reference_set(split, spec, per_class=10, seed=0, num_classes=1000)
    assert len(ref) == REFERENCE_BUDGET == 512
    assert len(set(ref.y.tolist())) == 512  # one per class, as many classes as the budget holds
    again = reference_set(split, spec, per_class=10, seed=0, num_classes=1000)
    assert torch.equal(ref.y, again.y) and torch.equal(ref.x, again.x)  # seeded
    other = reference_set(split, spec, per_class=10, seed=1, num_classes=1000)
    assert not torch.equal(ref.y, other.y)
    # a budget above what the split holds: every class gives what it has, up to per_class (1,257 in all)
    everything = reference_set(split, spec, per_class=10, seed=0, num_classes=1000, max_total=5000)
    assert len(everything) == len(split) and len(set(everything.y.tolist())) == 1000
    # a small class count stays the strict per-class draw, and still names a short class
    ten = reference_set(digits.train, spec, per_class=10, seed=0, num_classes=10)
    assert len(ten) == 100 and torch.bincount(ten.y).tolist() == [10] * 10
    from edgetl.errors import DataError

    with pytest.raises(DataError, match="class 0 has only"):
        reference_set(dataclasses.replace(digits.train, labels=torch.where(digits.train.labels == 0, 1,
                                                                            digits.train.labels)),
                      spec, per_class=10, num_classes=10)
    with pytest.raises(DataError, match="budget"):
        reference_set(split, spec, per_class=10, num_classes=1000, max_total=0)


def test_prune_of_a_1000_class_model_scores_on_the_bounded_set(digits):
    """prune() itself draws the bounded set: LRP on a 1,000-class head scores 512 samples, not 10,000."""
    from edgetl.artifact import Artifact, Format, InputSpec
    from edgetl.models import build_arch
    from edgetl.prune import PruneConfig, prune

    classes = tuple(f"c{i}" for i in range(1000))
    splits = dataclasses.replace(digits, classes=classes, train=_relabelled(digits.train, 1000),
                                 val=_relabelled(digits.val, 1000), test=_relabelled(digits.test, 1000))
    torch.manual_seed(0)
    spec = InputSpec(shape=(3, 16, 16), source_channels=1)
    art = Artifact(format=Format.TORCH, model=build_arch("edgetl_tinycnn", num_classes=1000), arch="edgetl_tinycnn",
                   input_spec=spec, labels=classes)
    out = prune(art, PruneConfig(criterion="lrp", ratio=0.25, samples_per_class=10), data=splits)
    [scoring] = out.history[-1].metrics["scoring"]
    assert scoring["reference_samples"] == 512
