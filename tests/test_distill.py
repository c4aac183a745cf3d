"""Distillation end to end on a real teacher (EfficientNet-Lite0 fine-tuned on digits): students, multi-teacher
weighting, class maps, resume after interruption, pruning-recovery hook, bad input and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from edgetl.artifact import Artifact
from edgetl.data import DataSplits, ImageSet
from edgetl.distill import DistillConfig, Teacher, class_map_by_name, distill, recovery_from, resume_path
from edgetl.errors import ConfigError, DataError, InputFileError, ModelError
from edgetl.stages import StageContext
from tests.conftest import run_cli_here


def _subset(s: ImageSet, n: int) -> ImageSet:
    return ImageSet(s.images[:n], s.labels[:n])


@pytest.fixture(scope="module")
def small(digits) -> DataSplits:
    """A slice of digits small enough for several short distillation runs per test."""
    return dataclasses.replace(digits, train=_subset(digits.train, 192), val=_subset(digits.val, 64),
                               test=_subset(digits.test, 64))


def _fast(**kw) -> DistillConfig:
    base = {"student": "edgetl_tinycnn", "epochs": 2, "batch_size": 32, "views": "original", "lr": 3e-3, "seed": 0}
    return DistillConfig(**{**base, **kw})


def _teach(teachers, data, cfg: DistillConfig) -> Artifact:
    """The stage on one teacher (its input), or on several (the context's teachers), into the config's student."""
    many = list(teachers) if isinstance(teachers, list) else [teachers]
    ctx = StageContext(teachers=tuple(many)) if len(many) > 1 else None
    return distill(many[0], cfg, data=data, ctx=ctx)


def _state(art: Artifact) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in art.model.state_dict().items()}


def _last(teachers, data, cfg: DistillConfig, path) -> dict[str, torch.Tensor]:
    """The student's weights after the last epoch (the returned artifact holds the best epoch's, which on
    these short runs may be the untrained start)."""
    _teach(teachers, data, dataclasses.replace(cfg, checkpoint=path))
    return torch.load(path, weights_only=True)["student"]


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def weak_teacher(lite0_digits) -> Artifact:
    """The real teacher with its classifier degraded by noise: a genuinely worse, but not useless, teacher."""
    from edgetl.models import classifier_layer

    model = copy.deepcopy(lite0_digits.model)
    head = classifier_layer(model)[1]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.weight.add_(torch.randn(head.weight.shape, generator=g) * head.weight.std() * 3)
    return dataclasses.replace(lite0_digits, model=model)


def test_tinycnn_student_learns_from_teacher(lite0_digits, small):
    art = distill(lite0_digits, _fast(epochs=4, views="both", batch_size=16, lr=1e-2, alpha=0.5), data=small)
    m = art.history[-1].metrics
    assert art.arch == "edgetl_tinycnn" and art.input_spec == lite0_digits.input_spec
    assert art.labels == tuple(small.classes)
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3, 4]
    assert m["val_accuracy"] == max(h["val_accuracy"] for h in m["history"])  # best weights kept
    assert m["val_accuracy"] > 0.35  # chance is 0.1; a few epochs on 192 images from scratch
    assert m["params"] < 50_000 and m["flops"] > 0
    assert art.history[-1].options["temperature"] == 4.0


def test_multi_teacher_weights_follow_label_agreement(lite0_digits, weak_teacher, small):
    art = distill(lite0_digits, _fast(epochs=1), data=small, ctx=StageContext(teachers=(lite0_digits, weak_teacher)))
    m = art.history[-1].metrics
    good, bad = m["teacher_agreement"]
    assert good > bad  # the noise really made the second teacher worse on the labels
    assert m["teacher_weights"][0] > m["teacher_weights"][1]
    assert sum(m["teacher_weights"]) == pytest.approx(1.0)


def test_given_teacher_weights_are_used(lite0_digits, weak_teacher, small, tmp_path):
    cfg = _fast()
    both = [lite0_digits, weak_teacher]
    alone = _last(lite0_digits, small, cfg, tmp_path / "a")
    only_first = _last(both, small, dataclasses.replace(cfg, teacher_weights=(1.0, 0.0)), tmp_path / "b")
    mixed = _last(both, small, dataclasses.replace(cfg, teacher_weights=(0.5, 0.5)), tmp_path / "c")
    _assert_same_weights(alone, only_first)  # weight 0: the weak teacher has no say
    diff = max(float((a - b).abs().max()) for a, b in zip(alone.values(), mixed.values(), strict=True))
    assert diff > 1e-4  # weight 0.5: it has


def test_class_order_mapping_or_refusal(lite0_digits, small, tmp_path):
    from edgetl.models import classifier_layer

    perm = list(reversed(range(10)))
    model = copy.deepcopy(lite0_digits.model)
    head = classifier_layer(model)[1]
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        head.bias.copy_(head.bias[perm])
    shuffled = dataclasses.replace(lite0_digits, model=model, labels=tuple(lite0_digits.labels[i] for i in perm))
    with pytest.raises(ModelError, match="orders its classes"):
        distill(shuffled, _fast(), data=small)
    mapped = Teacher(shuffled, class_map=class_map_by_name(shuffled.labels, small.classes))
    a = _last(mapped, small, _fast(epochs=1), tmp_path / "a")
    b = _last(lite0_digits, small, _fast(epochs=1), tmp_path / "b")
    _assert_same_weights(a, b, atol=1e-4)


def test_bad_input_is_refused(lite0_digits, small, tmp_path):
    from edgetl.models import build_arch

    wrong = Artifact(format="torch", model=build_arch("edgetl_tinycnn", num_classes=7), arch="edgetl_tinycnn",
                     input_spec=lite0_digits.input_spec, labels=tuple(str(i) for i in range(7)))
    with pytest.raises(ModelError, match="7 outputs"):
        distill(wrong, _fast(student=None), data=small, ctx=StageContext(teachers=(lite0_digits,)))
    empty = dataclasses.replace(small, train=_subset(small.train, 0))
    with pytest.raises(DataError, match="no training images"):
        distill(lite0_digits, _fast(), data=empty)
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0)
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError):
        distill(bad, _fast(), data=small)
    with pytest.raises(ConfigError, match="weight"):
        _teach([lite0_digits, lite0_digits], small, _fast(teacher_weights=(1.0,)))


class _StopAfter:
    """A progress reporter that interrupts training after ``steps`` optimizer steps, like a Ctrl-C or a kill."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def open(self, description, total):
        return self

    def close(self, task):
        pass

    def advance(self, n=1, **fields):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt


def test_resume_continues_an_interrupted_run(lite0_digits, small, tmp_path):
    from edgetl import progress

    ckpt = tmp_path / "student.pt.resume"
    cfg = _fast(epochs=4, views="both", checkpoint=ckpt)
    steps = 192 // 32
    previous = progress.set_reporter(_StopAfter(2 * steps + 3))  # dies inside epoch 3
    try:
        with pytest.raises(KeyboardInterrupt):
            distill(lite0_digits, cfg, data=small)
    finally:
        progress.set_reporter(previous)
    state = torch.load(ckpt, weights_only=True)  # intact, and loadable without unpickling code
    assert state["epoch"] == 2 and not state["finished"]
    assert not list(tmp_path.glob("*.part"))
    resumed = distill(lite0_digits, dataclasses.replace(cfg, resume=True), data=small)
    m = resumed.history[-1].metrics
    assert m["resumed_from_epoch"] == 2 and m["epochs_run"] == 4
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3, 4]
    straight_ckpt = tmp_path / "straight.resume"
    straight = distill(lite0_digits, dataclasses.replace(cfg, checkpoint=straight_ckpt), data=small)
    _assert_same_weights(_state(resumed), _state(straight))
    _assert_same_weights(torch.load(ckpt, weights_only=True)["student"],
                         torch.load(straight_ckpt, weights_only=True)["student"])
    for a, b in zip(m["history"], straight.history[-1].metrics["history"], strict=True):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a.get("train_loss", 0.0) == pytest.approx(b.get("train_loss", 0.0), rel=1e-5)
    with pytest.raises(ConfigError, match="other settings"):
        distill(lite0_digits, dataclasses.replace(cfg, resume=True, temperature=2.0), data=small)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # e.g. a disk that filled up under someone else's tool
    with pytest.raises(InputFileError, match="unreadable distillation checkpoint"):
        distill(lite0_digits, dataclasses.replace(cfg, resume=True), data=small)


def test_recovery_hook_distils_into_the_given_model(lite0_digits, small, tmp_path):
    from edgetl.models import build_arch

    pruned_like = Artifact(format="torch", model=build_arch("edgetl_tinycnn", num_classes=10), arch="edgetl_tinycnn",
                           input_spec=lite0_digits.input_spec, labels=tuple(small.classes))
    before = _state(pruned_like)
    recover = recovery_from(lite0_digits, _fast(student=None, epochs=1, checkpoint=tmp_path / "r"))
    out = recover(pruned_like, small)
    assert isinstance(out, Artifact) and out.history[-1].stage == "distill"
    assert out.arch == "edgetl_tinycnn" and out.history[-1].metrics["teacher_test_accuracy"] > 0.5
    _assert_same_weights(before, _state(pruned_like))  # the caller's model is not trained in place
    trained = torch.load(tmp_path / "r", weights_only=True)["student"]
    assert any(not torch.equal(before[k], v) for k, v in trained.items())


def test_cli_distill_writes_student_and_refuses_bad_teacher(lite0_digits_path, small, tmp_path):
    data = tmp_path / "small.npz"
    np.savez(data, x=torch.cat([small.train.images, small.val.images, small.test.images]).numpy(),
             y=torch.cat([small.train.labels, small.val.labels, small.test.labels]).numpy())
    out = tmp_path / "student.pt"
    r = run_cli_here("distill", "-t", str(lite0_digits_path), "-s", "edgetl_tinycnn", "-d", str(data), "-e", "1",
                     "--views", "original", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["arch"] == "edgetl_tinycnn" and out.exists()
    assert not resume_path(out).exists()  # finished: nothing left to resume
    assert json.loads(out.with_name(out.name + ".history.json").read_text())["epochs"][-1]["epoch"] == 1
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00garbage")
    r = run_cli_here("distill", "-t", str(bad), "-s", "edgetl_tinycnn", "-d", str(data), "-o", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "broken.pt" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.pt").exists()
