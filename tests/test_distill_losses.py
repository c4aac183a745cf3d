"""Distillation losses, feature adapters, teacher weighting and the TinyCNN student (no teacher training)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetl.distill import (
    FeatureHints,
    TinyCNN,
    agreement_weights,
    class_map_by_name,
    count_flops,
    kd_loss,
    parse_feature_pairs,
)
from edgetl.errors import ConfigError, ModelError, UnknownNameError


def _logits(n=8, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3


def test_zero_gradient_when_student_equals_teacher():
    t = _logits()
    s = t.clone().requires_grad_(True)
    loss = kd_loss(s, t, torch.zeros(8, dtype=torch.long), temperature=3.0, alpha=1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(s.grad.abs().max()) < 1e-6
    # ...and a different student does get a gradient, pointing towards the teacher.
    s2 = (t + _logits(seed=1)).requires_grad_(True)
    kd_loss(s2, t, temperature=3.0, alpha=1.0).backward()
    assert float(s2.grad.abs().max()) > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0, 8.0])
def test_soft_loss_is_t_squared_kl_and_gradient_scales_with_t(temperature):
    s, t = _logits(seed=2).requires_grad_(True), _logits(seed=3)
    loss = kd_loss(s, t, temperature=temperature, alpha=1.0)
    p_t = F.softmax(t / temperature, -1)
    p_s = F.softmax(s / temperature, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(kl) * temperature**2, rel=1e-5)
    loss.backward()
    # d/ds [T^2 KL(p_t || softmax(s/T))] = T (p_s - p_t) per sample, averaged over the batch.
    expected = temperature * (p_s - p_t).detach() / s.shape[0]
    torch.testing.assert_close(s.grad, expected, rtol=1e-4, atol=1e-6)


def test_hard_label_part_and_mixing():
    s, t = _logits(seed=4), _logits(seed=5)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    ce = F.cross_entropy(s, y)
    soft = kd_loss(s, t, temperature=4.0, alpha=1.0)
    assert float(kd_loss(s, t, y, temperature=4.0, alpha=0.0)) == pytest.approx(float(ce), rel=1e-6)
    mixed = kd_loss(s, t, y, temperature=4.0, alpha=0.3)
    assert float(mixed) == pytest.approx(0.3 * float(soft) + 0.7 * float(ce), rel=1e-5)
    # Unlabeled data: the teacher alone, whatever alpha says.
    assert float(kd_loss(s, t, None, temperature=4.0, alpha=0.3)) == pytest.approx(float(soft), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_refused(temperature):
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        kd_loss(_logits(), _logits(), temperature=temperature)


def test_bad_alpha_and_shape_mismatch():
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(_logits(), _logits(), temperature=2.0, alpha=1.5)
    with pytest.raises(ModelError, match="one column per class"):
        kd_loss(_logits(k=5), _logits(k=6), temperature=2.0)


class _Net(nn.Module):
    def __init__(self, width: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=stride, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_feature_adapter_shapes_and_identity():
    torch.manual_seed(0)
    student, teacher, same = _Net(4, stride=2), _Net(12), _Net(12)
    x = torch.randn(2, 3, 16, 16)
    hints = FeatureHints(student, teacher, [("body.0", "body.0"), ("head", "head")], example=x)
    conv = hints.adapters[0]
    assert isinstance(conv, nn.Conv2d) and tuple(conv.weight.shape) == (12, 4, 1, 1)
    assert isinstance(hints.adapters[1], nn.Identity)  # both heads give 4 outputs
    student(x)
    teacher(x)
    assert hints.loss().dim() == 0  # 8x8 student map pooled against 16x16 teacher map
    hints.remove()
    eq = FeatureHints(same, teacher, [("body.0", "body.0")], example=x)
    assert isinstance(eq.adapters[0], nn.Identity)


def test_feature_adapter_is_learned():
    torch.manual_seed(0)
    student = _Net(4)
    # The teacher's 12-channel map is a fixed linear mix of the student's 4 channels: a 1x1 adapter can match it.
    teacher = nn.Module()
    teacher.body = nn.Sequential(student.body[0], nn.Conv2d(4, 12, 1, bias=False))
    teacher.forward = lambda x: teacher.body(x)
    x = torch.randn(16, 3, 8, 8)
    hints = FeatureHints(student, teacher, [("body.0", "body.1")], example=x)
    before = hints.adapters[0].weight.detach().clone()
    opt = torch.optim.Adam(hints.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        with torch.no_grad():
            student(x)
            teacher(x)
        loss = hints.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert not torch.equal(before, hints.adapters[0].weight)
    assert losses[-1] < 0.05 * losses[0]


def test_feature_pairs_parse_and_bad_layer_name():
    assert parse_feature_pairs("a.1:b.2, c:d") == (("a.1", "b.2"), ("c", "d"))
    with pytest.raises(ConfigError, match="STUDENT_LAYER:TEACHER_LAYER"):
        parse_feature_pairs("a.1")
    with pytest.raises(UnknownNameError, match="did you mean 'body.0'"):
        FeatureHints(_Net(4), _Net(4), [("bodyy.0", "body.0")], example=torch.randn(1, 3, 8, 8))


def test_agreement_weights_favour_the_better_teacher():
    w = agreement_weights([0.9, 0.5], 10)
    assert w[0] > w[1] and sum(w) == pytest.approx(1.0)
    assert w == pytest.approx([0.8 / 1.2, 0.4 / 1.2])
    assert agreement_weights([0.1, 0.05], 10) == [0.5, 0.5]  # nobody above chance: equal say


def test_class_map_by_name():
    assert class_map_by_name(("b", "a", "c"), ("a", "b", "c")) == (1, 0, 2)
    with pytest.raises(ModelError, match="no output named"):
        class_map_by_name(("a", "b"), ("a", "z"))


def test_tinycnn_is_small_registered_and_reloads_without_pickle(tmp_path):
    from edgetl.artifact import Artifact, Format, InputSpec
    from edgetl.models import build_arch, list_archs, load_model, save_model

    assert "edgetl_tinycnn" in list_archs()
    net = build_arch("edgetl_tinycnn", num_classes=10)
    params = sum(p.numel() for p in net.parameters())
    assert 2_000 <= params <= 50_000
    flops = count_flops(net, (1, 3, 64, 64))
    assert 0 < flops < 5e6  # EfficientNet-Lite0 at 64x64 is ~60 MFLOPs
    assert sum(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in net.modules()) >= 3
    with torch.no_grad():
        net.features[0][0].weight.mul_(1.5)
    art = Artifact(format=Format.TORCH, model=net, arch="edgetl_tinycnn", input_spec=InputSpec(shape=(3, 64, 64)),
                   labels=tuple(str(i) for i in range(10)))
    path = save_model(art, tmp_path / "tiny.pt")
    back = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(back.model(x), net.eval()(x))
    with pytest.raises(ConfigError):
        TinyCNN(10, widths=(16,))
