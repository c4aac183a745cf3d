"""Model loading: every kind, safe reload after width changes, and every bad-input case."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgetl.artifact import Format, InputSpec
from edgetl.errors import InputFileError, ModelError, UnknownNameError, UnsafeCheckpointError
from edgetl.models import build_arch, conform_to_state_dict, load_model, save_model


def _resnet18_artifact():
    art = load_model("resnet18", num_classes=10, input_spec=InputSpec(shape=(3, 32, 32)))
    torch.manual_seed(0)
    return art


def _same_outputs(a, b, shape=(2, 3, 32, 32)):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_zoo_name_builds_pretrained_lite0():
    art = load_model("efficientnet_lite0")
    assert art.format is Format.TORCH and art.arch == "efficientnet_lite0"
    assert art.num_classes == 1000 and art.extra["pretrained"] is True
    # shipped ImageNet weights, not a random init: a pretrained stem has structured (non-N(0,1)) filters
    w = art.model._conv_stem.weight
    assert w.abs().mean() > 0.05 and not torch.allclose(w, build_arch("efficientnet_lite0")._conv_stem.weight)


def test_unknown_architecture_suggests_nearest():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        load_model("resnt18")


def test_checkpoint_roundtrip_keeps_outputs_history_and_spec(tmp_path):
    art = _resnet18_artifact()
    p = save_model(art, tmp_path / "m.pt")
    back = load_model(p)
    assert back.arch == "resnet18" and back.input_spec == art.input_spec and back.labels == art.labels
    assert _same_outputs(art.model, back.model)


def test_checkpoint_reloads_after_pruning_changed_widths(tmp_path):
    import torch_pruning as tp

    art = load_model("mobilenet_v2", num_classes=10, input_spec=InputSpec(shape=(3, 32, 32)))
    model = art.model
    ex = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(model, ex, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.classifier[1]])
    pruner.step()
    n_pruned = sum(p.numel() for p in model.parameters())
    assert n_pruned < 0.6 * sum(p.numel() for p in build_arch("mobilenet_v2", num_classes=10).parameters())
    p = save_model(art, tmp_path / "pruned.pt")
    # the file holds only tensors and primitives: loadable with weights_only=True
    raw = torch.load(p, weights_only=True)
    assert raw["kind"] == "edgetl-model"
    back = load_model(p)
    assert sum(q.numel() for q in back.model.parameters()) == n_pruned
    assert _same_outputs(model, back.model)
    # depthwise convs stay depthwise after reload
    dw = [m for m in back.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)


def test_plain_state_dict_needs_arch_and_then_loads(tmp_path):
    art = _resnet18_artifact()
    torch.save(art.model.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(InputFileError, match="--arch"):
        load_model(tmp_path / "sd.pth")
    back = load_model(tmp_path / "sd.pth", arch="resnet18")
    assert back.num_classes == 10 and _same_outputs(art.model, back.model)


def test_pruned_plain_state_dict_infers_widths(tmp_path):
    import torch_pruning as tp

    model = build_arch("mobilenet_v2", num_classes=10)
    tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 32, 32), importance=tp.importance.MagnitudeImportance(),
                              pruning_ratio=0.3, ignored_layers=[model.classifier[1]]).step()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    back = load_model(tmp_path / "sd.pth", arch="mobilenet_v2")
    assert _same_outputs(model.eval(), back.model)


def test_torchscript_and_exported_program(tmp_path):
    art = _resnet18_artifact()
    ts = torch.jit.trace(art.model, torch.randn(1, 3, 32, 32))
    ts.save(str(tmp_path / "m.ts"))
    a = load_model(tmp_path / "m.ts")
    assert a.extra["torchscript"] and a.num_classes == 10 and _same_outputs(art.model, a.model)
    ep = torch.export.export(art.model, (torch.randn(1, 3, 32, 32),))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    b = load_model(tmp_path / "m.pt2")
    assert b.input_spec.shape == (3, 32, 32) and b.num_classes == 10
    assert _same_outputs(art.model, b.model, shape=(1, 3, 32, 32))


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_pickled_module_refused_without_unsafe_pickle(tmp_path):
    torch.save(_UserNet(), tmp_path / "full.pt")
    with pytest.raises(UnsafeCheckpointError, match="--unsafe-pickle"):
        load_model(tmp_path / "full.pt")
    art = load_model(tmp_path / "full.pt", unsafe_pickle=True, input_spec=InputSpec(shape=(3, 8, 8)))
    assert art.num_classes == 4 and art.extra["unsafe_pickle"]


def test_unknown_module_cannot_be_saved_without_pickle(tmp_path):
    art = load_model  # noqa: F841 - keep the name visible for readers
    from edgetl.artifact import Artifact

    a = Artifact(format="torch", model=_UserNet(), input_spec=InputSpec(shape=(3, 8, 8)), labels=list("abcd"))
    with pytest.raises(ModelError, match="unsafe_pickle"):
        save_model(a, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_or_wrong_kind_file(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(InputFileError):
        load_model(p)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    p = save_model(_resnet18_artifact(), tmp_path / "m.pt")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="m.pt"):
        load_model(p)


def test_missing_file():
    with pytest.raises(InputFileError, match="not found"):
        load_model("nope/model.pt")


def test_conform_refuses_unknown_layer():
    with pytest.raises(ModelError, match="lacks"):
        conform_to_state_dict(build_arch("resnet18"), {}, structure={"no.such.layer": {"out_channels": 3}})


def test_tensorrt_bundle_directory_loads_as_a_bundle(lite0_digits, tmp_path):
    from exporters.base import export

    [bundle] = export(lite0_digits, "tensorrt", tmp_path / "out")
    back = load_model(bundle.path)
    assert back.format is Format.TENSORRT_BUNDLE and back.path == bundle.path
    assert back.input_spec == lite0_digits.input_spec and back.labels == lite0_digits.labels
