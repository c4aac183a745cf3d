"""The format table drives loaders, sizes, metadata and exports; and the defects found on the way stay fixed:
one failing format no longer discards the others, ``.pt2`` programs export, a TensorRT fp16 bundle from
``quantize`` reloads, ``Scope`` parses like every other choice, and the recipe's quantize default is
QuantizeConfig's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgetl.artifact import Artifact, Format, InputSpec

ROOT = Path(__file__).resolve().parents[1]


def _tiny(classes: int = 3) -> Artifact:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, classes)).eval()
    return Artifact(format="torch", model=model, input_spec=InputSpec(shape=(3, 16, 16)),
                    labels=tuple(str(i) for i in range(classes)))


# --------------------------------------------------------------------------- the table
def test_every_format_has_a_row_and_suffixes_map_back():
    from edgetl.formats import FORMAT_INFO, format_for_suffix

    assert set(FORMAT_INFO) == set(Format)
    for fmt, info in FORMAT_INFO.items():
        for s in info.suffixes if info.file else ():
            assert format_for_suffix(s) is fmt and format_for_suffix(s.upper()) is fmt
    assert format_for_suffix(".pt") is None  # PyTorch files are told apart by content, not suffix
    assert FORMAT_INFO[Format.TENSORRT_BUNDLE].parity_proxy is Format.ONNX


def test_size_on_disk_counts_companions(tmp_path):
    from edgetl.formats import size_on_disk

    (tmp_path / "m.xml").write_bytes(b"x" * 10)
    (tmp_path / "m.bin").write_bytes(b"x" * 90)
    (tmp_path / "n.onnx").write_bytes(b"x" * 5)
    (tmp_path / "n.onnx.data").write_bytes(b"x" * 7)
    assert size_on_disk(tmp_path / "m.xml") == 100 and size_on_disk(tmp_path / "n.onnx") == 12
    assert size_on_disk(tmp_path / "missing.onnx") is None


def test_one_precision_enum_everywhere():
    from edgetl.formats import Precision
    from exporters.base import ExportOptions
    from exporters.base import Precision as ExportPrecision

    assert ExportPrecision is Precision
    assert ExportOptions(precision="FP16").precision is Precision.FP16


# --------------------------------------------------------------------------- partial export
BROKEN = '''
from edgetl.artifact import Format
from edgetl.formats import ExportSpec, Precision

SPEC = ExportSpec("onnx-broken", Format.ONNX, ".onnx", (Format.TORCH,), None, frozenset(), (Precision.FP32,), "onnx",
                  ("onnx",), "brokenplug:export_broken", "an ONNX whose logits are shifted: parity must catch it")


def export_broken(artifact, out, options):
    import copy
    import dataclasses

    import torch

    from exporters.onnx import export_onnx

    model = copy.deepcopy(artifact.model)
    with torch.no_grad():
        model[-1].bias += 5 * torch.arange(len(model[-1].bias), dtype=torch.float32)
    exported = export_onnx(dataclasses.replace(artifact, model=model), out)
    exported.history[-1].options["format"] = "onnx-broken"
    return exported
'''


@pytest.fixture
def broken_plugin(tmp_path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "brokenplug.py").write_text(textwrap.dedent(BROKEN))
    info = site / "brokenplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgetl.exporters]\nonnx-broken = brokenplug:SPEC\n")
    return site


def test_a_failing_format_keeps_the_others(broken_plugin, tmp_path, monkeypatch):
    from edgetl.errors import ParityError, PartialExportError
    from edgetl.models import load_model
    from exporters.base import export

    monkeypatch.syspath_prepend(str(broken_plugin))
    out = tmp_path / "out"
    with pytest.raises(PartialExportError, match="1 of 2 formats failed") as info:
        export(_tiny(), "onnx-broken,onnx", out)
    err = info.value
    assert [a.path.name for a in err.results] == ["model.onnx"] and err.results[0].path.parent == out
    assert set(err.failures) == {"onnx-broken"} and err.failures["onnx-broken"]["error_type"] == "ParityError"
    manifest = json.loads((out / "export.json").read_text())
    assert [e["format"] for e in manifest["exports"]] == ["onnx"] and set(manifest["failed"]) == {"onnx-broken"}
    assert load_model(out / "model.onnx").format is Format.ONNX  # delivered whole, with its metadata
    # every format failing: the error as it is, and nothing written
    with pytest.raises(ParityError):
        export(_tiny(), "onnx-broken", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_cli_reports_each_format_and_exits_non_zero(broken_plugin, tmp_path):
    from edgetl.models import save_model

    art = _tiny()
    art.arch = None
    model_path = tmp_path / "tiny.pt"
    save_model(art, model_path, unsafe_pickle=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_plugin), str(ROOT)])}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "edgetl.cli", "export", str(model_path), "--unsafe-pickle", "--format",
                        "onnx,onnx-broken", "-o", str(out), "--json"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] is False and [e["format"] for e in res["exports"]] == ["onnx"]
    assert res["exports"][0]["parity"]["top1_agreement"] == 1.0
    assert res["failed"]["onnx-broken"]["error_type"] == "ParityError"
    assert "does not match the source" in res["failed"]["onnx-broken"]["error"]
    assert (out / "tiny.onnx").exists() and not (out / "tiny.onnx-broken").exists()


# --------------------------------------------------------------------------- .pt2
def test_a_torch_export_program_exports_and_matches(tmp_path):
    from edgetl.models import load_model
    from exporters.base import export

    src = _tiny()
    ep = torch.export.export(src.model, (torch.zeros(1, 3, 16, 16),))
    torch.export.save(ep, tmp_path / "tiny.pt2")
    art = load_model(tmp_path / "tiny.pt2", input_spec=src.input_spec, labels=src.labels)
    art.model.eval()  # the program's module refuses eval(); the loaded one takes it (mode was fixed at export)
    x = torch.randn(5, 3, 16, 16)  # a batch the static program was not exported with: run in chunks
    assert torch.allclose(art.model(x), src.model(x), atol=1e-5)
    done = export(art, "onnx,executorch", tmp_path / "out")
    assert [a.format for a in done] == [Format.ONNX, Format.EXECUTORCH]
    assert all(a.history[-1].metrics["parity"]["top1_agreement"] == 1.0 for a in done)


# --------------------------------------------------------------------------- TensorRT fp16 bundle from quantize
def test_tensorrt_fp16_bundle_from_quantize_reloads(digits, tmp_path):
    from edgetl.models import build_arch, load_model
    from edgetl.quantize import QuantizeConfig, quantize
    from edgetl.stages import StageContext

    art = Artifact(format="torch", model=build_arch("edgetl_tinycnn", num_classes=10), arch="edgetl_tinycnn",
                   input_spec=InputSpec(shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, source_channels=1),
                   labels=digits.classes)
    out = tmp_path / "bundle"
    q = quantize(art, QuantizeConfig(backend="tensorrt", precision="fp16", calib_samples=20, eval_samples=40),
                 data=digits, ctx=StageContext(output=out))
    assert q.format is Format.TENSORRT_BUNDLE and (out / "build.sh").exists()
    assert len(list(out.glob("*.engine.edgetl.json"))) == 1
    back = load_model(out)
    assert back.format is Format.TENSORRT_BUNDLE and back.labels == art.labels
    assert back.input_spec == art.input_spec and back.history[-1].stage == "export"
    assert any(r.stage == "quantize" for r in back.history)


# --------------------------------------------------------------------------- Choice.parse and the recipe default
def test_scope_parses_like_every_choice():
    from edgetl.errors import UnknownNameError
    from edgetl.prune import PruneConfig, Scope

    assert PruneConfig(scope="LayerWise").scope is Scope.LAYERWISE and str(Scope.GLOBAL) == "global"
    with pytest.raises(UnknownNameError, match="did you mean 'layerwise'"):
        PruneConfig(scope="layerwse")


def test_recipe_quantize_default_is_quantize_configs(monkeypatch):
    import importlib.util

    from edgetl.errors import MissingDependencyError
    from edgetl.quantize import QuantizeConfig
    from edgetl.recipe import parse_recipe, validate

    recipe = parse_recipe({"name": "q", "stages": [{"quantize": {"calib_samples": 50}}]})
    real = importlib.util.find_spec
    assert QuantizeConfig().backend.value == "onnxruntime"
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "nncf" else real(m, *a))
    validate(recipe)  # the default backend (onnxruntime) does not need NNCF
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real(m, *a))
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        validate(recipe)
