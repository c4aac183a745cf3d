"""Distillation without labels on any outputs: the student matches the teacher on every output the contract
names (KL for class distributions, cosine for embeddings, variance-normalised MSE for the rest), and a pruned
segmenter distilled back towards its unpruned teacher on unlabelled inputs agrees with it measurably better
(mIoU against the teacher's argmax on samples neither saw in training); pruning's recovery uses the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetl.artifact import Artifact, Format
from edgetl.contract import OutputTensor, parse_flags
from edgetl.contract_read import resolve_contract
from edgetl.distill import DistillConfig, distill
from edgetl.distill.outputs import output_loss
from edgetl.errors import ConfigError
from edgetl.fidelity import compare
from edgetl.inputs import InputSet
from edgetl.prune import PruneConfig, prune
from edgetl.prune.contract_prune import run_outputs
from edgetl.stages import StageContext
from tests import shapes


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"
    model = shapes.trained("SegNet", cache)
    x = shapes.mnist(None)[0]
    train = tuple({"image": x[i : i + 1]} for i in range(4000, 4160))
    unseen = tuple({"image": x[i : i + 1]} for i in range(4200, 4260))  # neither pruning nor distillation saw these
    contract = resolve_contract(model, parse_flags(inputs=["Nx1xHxW:float32"], task="segmentation"),
                                data=train[0])
    teacher = Artifact(format=Format.TORCH, model=model, input_spec=None, labels=(), contract=contract)
    return teacher, train, unseen


def _miou(teacher, student, samples):
    c = teacher.contract
    return compare(run_outputs(teacher.model, samples, c), run_outputs(student.model, samples, c),
                   contract=c).segmentation[0].miou


def test_losses_by_role():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 3, 5, 5, generator=g)
    mask = OutputTensor("m", role="mask")
    same, terms = output_loss({"m": t}, {"m": t.clone()}, [mask])
    assert float(same) == pytest.approx(0.0, abs=1e-6) and set(terms) == {"m"}
    boxes = OutputTensor("b", role="boxes")
    mean = torch.full_like(t, float(t.mean()))
    as_bad_as_the_mean, _ = output_loss({"b": mean}, {"b": t}, [boxes])
    assert float(as_bad_as_the_mean) == pytest.approx(1.0, rel=1e-4)  # normalised MSE: 1 is predicting the mean
    emb = OutputTensor("e", role="embedding")
    scaled, _ = output_loss({"e": 3 * t[:, :, 0, 0]}, {"e": t[:, :, 0, 0]}, [emb])
    assert float(scaled) == pytest.approx(0.0, abs=1e-6)  # cosine: scale does not matter
    both, terms = output_loss({"m": t, "b": mean}, {"m": t, "b": t}, [mask, boxes])
    assert float(both) == pytest.approx(0.5, rel=1e-4) and terms["b"] == pytest.approx(1.0, rel=1e-4)


def test_distilling_a_pruned_segmenter_back_improves_miou_on_unseen_inputs(seg):
    teacher, train, unseen = seg
    data = InputSet(samples=train, origin="test")
    pruned = prune(teacher, PruneConfig(criterion="l1", ratio=0.6, round_to=None), data=data)
    before = _miou(teacher, pruned, unseen)
    assert before < 0.9, f"pruning barely hurt (mIoU {before:.3f}): nothing to recover"
    cfg = DistillConfig(epochs=4, lr=3e-3, batch_size=16, views="original", seed=0)
    student = distill(pruned, cfg, data=data, ctx=StageContext(teachers=(teacher,)))
    m = student.history[-1].metrics
    after = _miou(teacher, student, unseen)
    assert after > before + 0.05, (before, after)
    assert m["labels_used"] is False and m["held_out_loss_after"] < m["held_out_loss_before"]
    assert m["headline_before"]["metric"] == "miou" and m["headline_after"]["value"] > m["headline_before"]["value"]
    assert student.model(torch.zeros(1, 1, 40, 36)).shape == (1, 2, 40, 36)  # still any H x W
    assert [r.stage for r in student.history][-2:] == ["prune", "distill"]


def test_feature_hints_join_the_output_loss_through_an_adapter(seg):
    teacher, train, unseen = seg
    data = InputSet(samples=train, origin="test")
    pruned = prune(teacher, PruneConfig(criterion="l1", ratio=0.6, round_to=None), data=data)
    assert pruned.model.net[2].out_channels < teacher.model.net[2].out_channels  # widths differ: an adapter learns
    cfg = DistillConfig(epochs=3, lr=3e-3, batch_size=16, views="original", feature_pairs="net.2:net.2",
                        feature_weight=0.1)
    student = distill(pruned, cfg, data=data, ctx=StageContext(teachers=(teacher,)))
    m = student.history[-1].metrics
    assert m["feature_pairs"] == ["net.2:net.2"]
    assert _miou(teacher, student, unseen) > _miou(teacher, pruned, unseen) + 0.05
    assert not student.model.net[2]._forward_hooks  # the hint hooks are gone from the result


def test_pruning_recovers_by_label_free_distillation(seg):
    teacher, train, unseen = seg
    data = InputSet(samples=train, origin="test")
    cfg = PruneConfig(criterion="lrp", ratio=0.6, round_to=None, recover="distill", recover_epochs=3,
                      recover_lr=3e-3, reference_samples=32)
    out = prune(teacher, cfg, data=data)
    m = out.history[-1].metrics
    step = m["steps"][0]
    assert step["headline_after_recovery"]["value"] > step["headline_before_recovery"]["value"] + 0.02, step
    assert [r.stage for r in out.history] == ["prune-step", "distill", "prune"]
    unrecovered = prune(teacher, PruneConfig(criterion="lrp", ratio=0.6, round_to=None, reference_samples=32),
                        data=data)
    assert _miou(teacher, out, unseen) > _miou(teacher, unrecovered, unseen)


def test_label_free_distillation_refuses_what_it_cannot_do(seg):
    teacher, train, _ = seg
    data = InputSet(samples=train[:20], origin="test")
    with pytest.raises(ConfigError, match="one teacher"):
        distill(teacher, DistillConfig(epochs=1), data=data, ctx=StageContext(teachers=(teacher, teacher)))
    with pytest.raises(ConfigError, match="zoo student is built for classes"):
        distill(teacher, DistillConfig(epochs=1, student="edgetl_tinycnn"), data=data)
    with pytest.raises(ConfigError, match="--unfreeze"):
        distill(teacher, DistillConfig(epochs=1, unfreeze=(0.5,)), data=data, ctx=StageContext(teachers=(teacher,)))
    with pytest.raises(ConfigError, match="student layer"):
        distill(teacher, DistillConfig(epochs=1, feature_pairs="net.9:net.2"), data=data,
                ctx=StageContext(teachers=(teacher,)))
    assert np.isfinite(_miou(teacher, teacher, train[:3]))


def test_cli_distils_a_pruned_segmenter_on_an_unlabelled_npz(seg, tmp_path):
    import json

    from tests.test_contract_prune import _checkpoint, _cli

    teacher, train, unseen = seg
    pruned = prune(teacher, PruneConfig(criterion="l1", ratio=0.6, round_to=None),
                   data=InputSet(samples=train, origin="test"))
    t_path = _checkpoint(teacher.model, "shapes_segnet", tmp_path / "teacher.pt")
    s_path = _checkpoint(pruned.model, "shapes_segnet", tmp_path / "pruned.pt")
    np.savez(tmp_path / "tiles.npz", image=np.concatenate([s["image"] for s in train]))
    out = tmp_path / "recovered.pt"
    r = _cli("distill", "-t", str(t_path), "-s", str(s_path), "--data", str(tmp_path / "tiles.npz"), "--task",
             "segmentation", "-e", "4", "--lr", "0.003", "--batch-size", "16", "--views", "original", "-o", str(out),
             "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["labels_used"] is False and res["samples"] == 160 and res["held_out_samples"] == 32
    assert res["headline_after"]["metric"] == "miou"
    assert res["headline_after"]["value"] > res["headline_before"]["value"] + 0.1, res
    from edgetl.models import load_model
    from tests.test_contract_prune import register_test_archs

    register_test_archs()
    recovered = load_model(out)
    recovered.contract = teacher.contract
    assert _miou(teacher, recovered, unseen) > _miou(teacher, pruned, unseen) + 0.1
    r = _cli("distill", "-t", str(t_path), "-t", str(t_path), "-s", str(s_path), "--data", str(tmp_path / "tiles.npz"),
             "--task", "segmentation", "-o", str(tmp_path / "never.pt"))
    assert r.returncode == 2 and "one teacher" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
