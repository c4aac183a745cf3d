"""In-situ latency deltas (benchmarks.latency_insitu): each group cut alone in the full model, the rest of the
machinery checked with a deterministic "device" (latency = the model's MFLOPs), so nothing here is timed."""

from __future__ import annotations

import json

import pytest
import torch

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.prune import PruneConfig, layer_widths, model_cost, prune
from tests.test_latency_prune import _small_cnn as _cnn  # the same small CNN the latency-table tests time

SHAPE = (3, 32, 32)


def _mflops(models):
    return [model_cost(m, SHAPE).flops / 1e6 for m in models]


@pytest.fixture(scope="module")
def insitu():
    from benchmarks.latency_insitu import build_insitu

    return build_insitu(_cnn(), SHAPE, deploy=lambda m: m, time=_mflops)


def test_groups_are_the_pruners_and_each_variant_cuts_only_its_group(insitu):
    from benchmarks.latency_insitu import group_widths, prunable_groups, prune_groups_to

    model = _cnn()
    groups = prunable_groups(model, SHAPE)
    assert groups == {"0": 32, "6": 64, "8": 48}  # conv "3" and its depthwise "6" are one group; no classifier
    assert group_widths(64) == [16, 32, 48] and group_widths(12) == [8]
    cut = prune_groups_to(model, SHAPE, {"6": 16})
    w = layer_widths(cut)
    assert w["3"] == 16 and w["6"] == 16 and w["0"] == 32 and w["8"] == 48  # coupled depthwise follows
    assert cut(torch.zeros(1, *SHAPE)).shape == (1, 10)
    assert layer_widths(model)["6"] == 64  # the original is untouched
    # every delta is the measured change of the full model with that one group cut
    base = _mflops([model])[0]
    assert insitu.base_ms == pytest.approx(base)
    assert insitu.deltas["6"][32] == pytest.approx(_mflops([prune_groups_to(model, SHAPE, {"6": 32})])[0] - base)
    assert insitu.candidates("6") == [16, 32, 48, 64]


def test_prediction_is_additive_interpolated_and_clamped(insitu):
    assert insitu.predict_ms({}) == insitu.base_ms
    d = insitu.deltas["6"]
    assert insitu.predict_ms({"6": 40}) == pytest.approx(insitu.base_ms + (d[32] + d[48]) / 2)
    assert insitu.predict_ms({"6": 32, "8": 24}) == pytest.approx(insitu.base_ms + d[32] + insitu.deltas["8"][24])
    with pytest.raises(KeyError):
        insitu.predict_ms({"nope": 8})
    # with grid, the allocator may also pick the multiples of 8 between measured widths (interpolated)
    gridded = type(insitu).from_dict({**insitu.to_dict(), "grid": True})
    assert gridded.candidates("6") == [8, 16, 24, 32, 40, 48, 56, 64]
    assert gridded.predict_ms({"6": 40}) == insitu.predict_ms({"6": 40})
    # a far-fetched extrapolation never goes below the floor (5 % of the base), and is counted
    silly = type(insitu).from_dict({**insitu.to_dict(), "base_ms": 1e-3})
    assert silly.predict_ms({g: 1 for g in silly.groups}) == pytest.approx(0.05e-3) and silly.clamped == 1


def test_additive_deltas_predict_held_out_widths_and_calibrate_from_feedback(insitu):
    """On a held-out allocation (two coupled groups cut together) the additive prediction misses the
    interaction (conv "3" loses input and output channels); one measured/predicted pair re-fits the scale."""
    from benchmarks.latency_insitu import InSituModel, prune_groups_to

    widths = {"0": 16, "6": 32, "8": 24}
    measured = _mflops([prune_groups_to(_cnn(), SHAPE, widths)])[0]
    predicted = insitu.predict_ms(widths)
    assert predicted < insitu.base_ms and measured < insitu.base_ms
    m = InSituModel.from_dict(json.loads(json.dumps(insitu.to_dict())))
    m.calibrate(predicted, measured)
    assert m.predict_ms(widths) == pytest.approx(measured, rel=1e-6)
    assert m.to_dict()["calibrations"][0]["measured_ms"] == measured


def test_the_prune_stage_allocates_on_the_in_situ_widths(insitu, digits):
    target = insitu.base_ms + 0.5 * sum(min(d.values()) for d in insitu.deltas.values())
    spec = InputSpec(shape=SHAPE, source_channels=1)
    art = Artifact(format=Format.TORCH, model=_cnn(), arch="cnn", input_spec=spec, labels=tuple(map(str, range(10))))
    pruned = prune(art, PruneConfig(criterion="lrp", target_latency_ms=target, latency_model=insitu,
                                    samples_per_class=2), data=digits)
    alloc = pruned.history[-1].metrics["latency_allocation"]
    assert alloc["feasible"] and alloc["predicted_ms"] <= target
    widths = layer_widths(pruned.model)
    for g, kept in alloc["keep"].items():
        assert widths[g] == kept and kept in insitu.candidates(g)
