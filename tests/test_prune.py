"""Structured pruning: criteria on ResNet/MobileNet/EfficientNet graphs, real accuracy on lite0_digits,
targets, iterative schedule, safe reload, ONNX parity and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.errors import ConfigError, DataError, ModelError, UnknownNameError
from edgetl.prune import (
    CRITERIA,
    PruneConfig,
    Scope,
    layer_widths,
    make_criterion,
    model_cost,
    prune,
    prune_model,
    reference_set,
    relevance_scores,
)

SPEC32 = InputSpec(shape=(3, 32, 32), source_channels=1)
STRUCT_ARCHS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small")


def _zoo_artifact(arch: str) -> Artifact:
    from edgetl.models import build_arch

    torch.manual_seed(0)
    return Artifact(format=Format.TORCH, model=build_arch(arch, num_classes=10), arch=arch, input_spec=SPEC32,
                    labels=tuple(str(i) for i in range(10)))


@pytest.fixture(scope="module")
def ref32(digits):
    return reference_set(digits.train, SPEC32, per_class=2, seed=0, num_classes=10)


@pytest.mark.parametrize("arch", STRUCT_ARCHS)
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_each_criterion_prunes_each_architecture(arch, criterion, ref32):
    art = _zoo_artifact(arch)
    model = art.model
    before = layer_widths(model)
    params_before = sum(p.numel() for p in model.parameters())
    crit = make_criterion(criterion, seed=1)
    crit.prepare(model, ref32 if crit.needs_data else None)
    plan = prune_model(model, torch.zeros(1, 3, 32, 32), crit, ratio=0.4, config=PruneConfig(criterion=criterion))
    after = layer_widths(model)
    assert sum(plan.removals.values()) > 0
    assert sum(p.numel() for p in model.parameters()) < 0.8 * params_before
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    changed = [n for n in after if after[n] != before[n]]
    assert changed, "no layer lost channels"
    for n in changed:
        assert after[n] >= 1
        m = model.get_submodule(n)
        depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1
        if not depthwise and after[n] < before[n]:
            assert after[n] % 8 == 0, f"{n}: width {after[n]} not a multiple of round_to 8"
    # the classifier's outputs are never pruned
    from edgetl.models import classifier_layer

    assert classifier_layer(model)[1].out_features == 10


def test_lrp_scores_are_real_relevance_on_a_plain_net(digits):
    """On a plain conv net (no residuals) relevance is conserved layer to layer and down to the input."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    with torch.no_grad():  # non-trivial batch-norm scales, so the merge matters; biases (which absorb relevance
        for m in net.modules():  # by design of LRP's rules) stay zero so conservation must be near exact
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        net[-1].bias.zero_()
    ref = reference_set(digits.train, InputSpec(shape=(3, 16, 16)), per_class=3, seed=0, num_classes=10)
    result = relevance_scores(net, ref)
    assert "NamedMergeBatchNorm (2 batch-norms" in result.canonizers[0]
    assert result.conservation["input_over_seed"] == pytest.approx(1.0, abs=0.1)
    assert result.conservation["layer_min"] == pytest.approx(1.0, abs=0.1)
    assert set(result.scores) == {"0", "3", "8"}
    assert result.scores["3"].shape == (32,) and bool((result.scores["3"] >= 0).all())
    assert float(result.scores["8"].sum()) == pytest.approx(len(ref))  # one-hot seed, one unit per sample
    assert result.cost_ratio is not None and result.cost_ratio > 0


def test_canonizers_are_reported_honestly(ref32, lite0_digits, digits):
    res = relevance_scores(_zoo_artifact("resnet18").model, ref32, measure_cost=False)
    assert any("ResNet block canonizers" in c for c in res.canonizers) and not res.notes
    ref = reference_set(digits.train, lite0_digits.input_spec, per_class=1, seed=0, num_classes=10)
    res = relevance_scores(lite0_digits.model, ref, measure_cost=False, composite="epsilon-alpha2-beta1")
    assert res.composite == "epsilon-alpha2-beta1"
    # EfficientNet-Lite0's 9 residual additions are traced (torch.fx) into zennit Sum modules; no gaps noted
    assert "NamedMergeBatchNorm (49 batch-norms" in res.canonizers[0]
    assert any("residual sums (9 additions" in c for c in res.canonizers) and not res.notes
    assert set(res.scores) >= {"_conv_stem", "_blocks.15._project_conv", "_fc"}  # original layer names kept


class _Residual(nn.Module):
    def __init__(self, data_dependent: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 10)
        self.data_dependent = data_dependent

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)  # the residual join
        x = x + 1.0  # a scalar add: not a join, must stay as it is
        if self.data_dependent and x.sum() > 0:  # torch.fx cannot trace a branch on tensor values
            x = x * 2
        return self.head(x.mean(dim=(2, 3)))


def test_residual_sums_rewrite_joins_only_and_untraceable_nets_fall_back_with_a_note():
    from edgetl.prune.relevance import choose_canonizers, residual_sums

    torch.manual_seed(0)
    net, x = _Residual().eval(), torch.randn(2, 3, 8, 8)
    gm, n = residual_sums(net, x)
    assert n == 1 and isinstance(gm.get_submodule("edgetl_residual_sum_0"), torch.nn.Module)
    assert torch.allclose(gm(x), net(x), atol=1e-6)
    assert {"stem", "body.0", "body.2", "head"} <= {name for name, _ in gm.named_modules()}
    model, _, names, notes = choose_canonizers(_Residual(data_dependent=True).eval(), x)
    assert isinstance(model, _Residual) and not any("residual sums" in c for c in names)
    assert len(notes) == 1 and "torch.fx cannot trace it" in notes[0]


def test_criteria_plug_into_torch_pruning_metapruner(ref32):
    import torch_pruning as tp

    model = _zoo_artifact("resnet18").model
    crit = make_criterion("lrp")
    crit.prepare(model, ref32)
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, 3, 32, 32), importance=crit.bind(model), pruning_ratio=0.3,
                                  ignored_layers=[model.fc])
    pruner.step()
    assert model.layer1[0].conv1.out_channels < 64
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_lrp_keeps_accuracy_far_above_random(lite0_digits, digits):
    """The scarce-data claim on a real model: 10 samples per class, no fine-tuning, 10 % of channels."""
    from edgetl.train import evaluate_module

    spec = lite0_digits.input_spec
    ref = reference_set(digits.train, spec, per_class=10, seed=0, num_classes=10)
    example = torch.zeros(spec.batch_shape(1))

    def accuracy(criterion: str, seed: int = 0) -> float:
        import copy

        model = copy.deepcopy(lite0_digits.model)
        crit = make_criterion(criterion, seed=seed)
        crit.prepare(model, ref if crit.needs_data else None)
        prune_model(model, example, crit, ratio=0.1, config=PruneConfig(criterion=criterion, round_to=None))
        return evaluate_module(model, digits.test, spec)["accuracy"]

    base = evaluate_module(lite0_digits.model, digits.test, spec)["accuracy"]
    lrp = accuracy("lrp")
    rand = float(np.mean([accuracy("random", s) for s in range(3)]))
    assert lrp > rand + 0.25, (base, lrp, rand)
    assert lrp > 0.5 * base


@pytest.fixture(scope="module")
def pruned_lite0(lite0_digits, digits):
    return prune(lite0_digits, PruneConfig(criterion="lrp", ratio=0.5, samples_per_class=5), data=digits)


def test_prune_stage_makes_a_smaller_model_with_full_report(pruned_lite0, lite0_digits):
    rec = pruned_lite0.history[-1]
    m = rec.metrics
    assert rec.stage == "prune" and rec.options["criterion"] == "lrp"
    assert m["params_after"] <= 0.6 * m["params_before"]
    assert m["flops_after"] < m["flops_before"] and m["macs_after"] == m["flops_after"] // 2
    assert m["bytes_after"] < m["bytes_before"]
    real = model_cost(pruned_lite0.model, pruned_lite0.input_spec.shape)
    assert real.params == m["params_after"] and real.flops == m["flops_after"]
    assert 0.0 <= m["val_accuracy_after"] <= 1.0 and m["val_accuracy_before"] > 0.5
    assert m["widths_after"] != m["widths_before"] and set(m["widths_after"]) == set(m["widths_before"])
    assert m["scoring"][0]["cost_ratio"] > 0 and m["scoring"][0]["reference_samples"] == 50
    assert lite0_digits.model is not pruned_lite0.model
    assert layer_widths(lite0_digits.model) == m["widths_before"]  # the input artifact is untouched


def test_pruned_model_reloads_safely(pruned_lite0, tmp_path):
    from edgetl.models import load_model, save_model

    path = save_model(pruned_lite0, tmp_path / "pruned.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no code is unpickled
    assert raw["arch"] == "efficientnet_lite0"
    back = load_model(path)
    assert layer_widths(back.model) == layer_widths(pruned_lite0.model)
    x = torch.randn(2, *pruned_lite0.input_spec.shape)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), pruned_lite0.model(x))
    assert back.history[-1].stage == "prune"


def test_pruned_model_exports_to_onnx_with_matching_outputs(pruned_lite0, tmp_path):
    import onnxruntime as ort

    model = pruned_lite0.model.eval()
    x = torch.randn(4, *pruned_lite0.input_spec.shape)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert path.stat().st_size < 0.7 * 4 * pruned_lite0.history[-1].metrics["params_before"]


def test_iterative_pruning_recomputes_scores_and_recovers(lite0_digits, digits):
    from edgetl.train import evaluate_module, fit

    calls = []

    def recover(art, data):
        before = evaluate_module(art.model, data.val, art.input_spec)["accuracy"]
        fit(art.model, data, art.input_spec, epochs=2, lr=1e-3, seed=0)
        after = evaluate_module(art.model, data.val, art.input_spec)["accuracy"]
        calls.append((sum(p.numel() for p in art.model.parameters()), before, after))
        return art

    cfg = PruneConfig(criterion="lrp", ratio=0.3, steps=2, samples_per_class=3)
    iterative = prune(lite0_digits, cfg, data=digits, recover=recover)
    m = iterative.history[-1].metrics
    assert len(m["scoring"]) == 2 and [s["step"] for s in m["steps"]] == [1, 2]
    assert m["steps"][0]["ratio"] == pytest.approx(0.15) and m["steps"][1]["ratio"] == pytest.approx(0.3)
    assert calls[0][0] > calls[1][0]  # the second step pruned the recovered model further
    # recovery really trained: the first step (largest drop) gained; fit keeps the best weights, so none lost
    assert calls[0][2] > calls[0][1] and all(after >= before for _, before, after in calls), calls
    assert m["steps"][1]["val_accuracy_after_recovery"] == pytest.approx(m["val_accuracy_after"])


def test_flops_target_is_met_by_searching_the_ratio():
    art = _zoo_artifact("mobilenet_v2")
    out = prune(art, PruneConfig(criterion="l1", target_flops=0.5))
    m = out.history[-1].metrics
    assert m["flops_after"] <= 0.5 * m["flops_before"]
    assert m["flops_after"] >= 0.4 * m["flops_before"]  # not overshot far
    assert 0 < m["ratio"] < 0.9 and m["val_accuracy_after"] is None


def test_params_target_and_layerwise_scope():
    art = _zoo_artifact("resnet18")
    out = prune(art, PruneConfig(criterion="l2", target_params=0.6, scope=Scope.LAYERWISE))
    m = out.history[-1].metrics
    assert 0.5 * m["params_before"] <= m["params_after"] <= 0.6 * m["params_before"]


def test_ignored_layers_keep_their_width():
    from edgetl.prune import layers_matching

    art = _zoo_artifact("resnet18")
    out = prune(art, PruneConfig(criterion="l1", ratio=0.5, scope="layerwise", ignore=layers_matching("layer1.0.conv1")))
    assert out.model.layer1[0].conv1.out_channels == 64
    assert out.model.layer1[1].conv1.out_channels == 32


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_ratio_outside_open_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        PruneConfig(ratio=ratio)


def test_unknown_criterion_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match="did you mean 'lrp'"):
        PruneConfig(criterion="lpr")


def test_target_that_would_empty_a_layer_is_an_error_naming_it():
    art = _zoo_artifact("resnet18")
    cfg = PruneConfig(criterion="l1", ratio=0.99, scope="layerwise", max_layer_ratio=1.0, round_to=None)
    with pytest.raises(ConfigError, match=r"would empty layer '.+'"):
        prune(art, cfg)


def test_unreachable_flops_target_is_an_error():
    art = _zoo_artifact("resnet18")
    with pytest.raises(ConfigError, match="out of reach"):
        prune(art, PruneConfig(criterion="l1", target_flops=0.001))


def test_untraceable_architecture_names_the_op():
    from edgetl.models import build_arch

    art = Artifact(format=Format.TORCH, model=build_arch("shufflenet_v2_x0_5", num_classes=10), arch="shufflenet_v2_x0_5",
                   input_spec=SPEC32, labels=tuple(str(i) for i in range(10)))
    with pytest.raises(ModelError, match=r"cannot trace ShuffleNetV2 at op \w+ after layer 'stage"):
        prune(art, PruneConfig(criterion="l1", ratio=0.3))


def test_dataset_classes_must_match_the_model(digits):
    art = _zoo_artifact("resnet18")
    art = Artifact(format=Format.TORCH, model=art.model, arch="resnet18", input_spec=SPEC32,
                   labels=("a", "b", "c"))
    with pytest.raises(DataError, match="3 outputs but dataset"):
        prune(art, PruneConfig(criterion="l1"), data=digits)


# --------------------------------------------------------------------------- CLI
def test_cli_prunes_and_writes_a_reloadable_model(lite0_digits_path, tmp_path):
    import json

    from conftest import run_cli_here

    out = tmp_path / "small.pt"
    r = run_cli_here("prune", str(lite0_digits_path), "--data", "digits", "--ratio", "0.5", "--samples-per-class", "2",
                "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["params_reduction"] >= 0.4 and res["file_bytes"] == out.stat().st_size
    assert res["scoring"][0]["cost_ratio"] > 0
    from edgetl.models import load_model

    assert layer_widths(load_model(out).model) == res["widths_after"]


@pytest.mark.parametrize("extra, code, message", [
    (["--ratio", "1.5"], 2, "strictly between 0 and 1"),
    (["--target-flops", "0.001", "--criterion", "l1"], 2, "out of reach"),
    (["--criterion", "lpr"], 2, "did you mean 'lrp'"),
])
def test_cli_bad_input_exits_nonzero_without_output(lite0_digits_path, tmp_path, extra, code, message):
    from conftest import run_cli_here

    out = tmp_path / "never.pt"
    r = run_cli_here("prune", str(lite0_digits_path), "--data", "digits", "-o", str(out), *extra)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and not out.exists()
    assert not list(tmp_path.glob("*.part"))


def test_cli_class_mismatch_and_untraceable_model(tmp_path, lite0_digits_path):
    from conftest import run_cli_here

    from edgetl.models import build_arch, save_model

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "three.npz", x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=np.repeat([0, 1, 2], 10))
    out = tmp_path / "never.pt"
    r = run_cli_here("prune", str(lite0_digits_path), "--data", str(tmp_path / "three.npz"), "-o", str(out))
    assert r.returncode != 0 and "10 outputs but dataset" in r.stderr and not out.exists()

    shuffle = Artifact(format=Format.TORCH, model=build_arch("shufflenet_v2_x0_5", num_classes=10),
                       arch="shufflenet_v2_x0_5", input_spec=SPEC32, labels=tuple(str(i) for i in range(10)))
    src = save_model(shuffle, tmp_path / "shuffle.pt")
    r = run_cli_here("prune", str(src), "--data", "digits", "--criterion", "l1", "-o", str(out))
    assert r.returncode == 1 and "cannot trace ShuffleNetV2" in r.stderr and not out.exists()
