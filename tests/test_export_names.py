"""Exported file names of a model known only by its architecture: never a colon (scp/rsync read ``a:b`` as a
host), the class name of ``module.path:Class``."""

from __future__ import annotations

import pytest

from edgetl.artifact import Artifact, Format, InputSpec


@pytest.mark.parametrize(("arch", "stem"), [("tests.shapes:SegNet", "SegNet"), ("mypkg.nets:Seg Net/2", "Seg_Net_2"),
                                            ("efficientnet_lite0", "efficientnet_lite0"), (":::", "model")])
def test_safe_stem(arch, stem):
    from exporters.base import safe_stem

    assert safe_stem(arch) == stem


def test_an_own_architecture_exports_under_its_class_name(tmp_path):
    import torch.nn as nn

    from exporters.base import export

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    art = Artifact(format=Format.TORCH, model=model, input_spec=InputSpec(shape=(3, 8, 8)), labels=("a", "b"),
                   arch="mypkg.nets:TinyNet")
    (onnx,) = export(art, ["onnx"], tmp_path / "out")
    assert onnx.path.name == "TinyNet.onnx"
    assert ":" not in "".join(p.name for p in (tmp_path / "out").rglob("*"))
