"""Fine-tuning really learns, and evaluation agrees across runtimes (PyTorch, ONNX Runtime, OpenVINO)."""

from __future__ import annotations

import json

import pytest
import torch

from edgetl.artifact import Artifact, Format
from edgetl.evaluate import evaluate
from edgetl.finetune import default_resolution
from edgetl.models import SIDECAR_SUFFIX, load_model
from edgetl.train import random_shift


def test_finetuned_lite0_learns_digits(lite0_digits, digits):
    rec = lite0_digits.history[-1]
    assert rec.stage == "finetune"
    assert lite0_digits.input_spec.shape == (3, 32, 32) and lite0_digits.input_spec.source_channels == 1
    assert rec.metrics["test_accuracy"] >= 0.85  # chance is 0.10
    phases = [p["phase"] for p in rec.metrics["phases"]]
    assert phases[:2] == ["adapt batch-norm", "head"] and phases[-1].startswith("unfreeze")
    r = evaluate(lite0_digits, digits, split="test")
    assert r["accuracy"] == pytest.approx(rec.metrics["test_accuracy"], abs=1e-9) and r["samples"] == 269


def test_default_resolution_rule():
    assert default_resolution((28, 28), 224) == 64
    assert default_resolution((8, 8), 224) == 64
    assert default_resolution((100, 90), 224) == 128
    assert default_resolution((500, 500), 224) == 224


def test_random_shift_moves_content_without_changing_it():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    y = random_shift(x, max_frac=0.125, generator=torch.Generator().manual_seed(0))
    assert y.sum() == 1.0 and y.shape == x.shape


def _export_onnx(art: Artifact, path):
    torch.onnx.export(art.model, (torch.randn(art.input_spec.batch_shape(1)),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    (path.parent / (path.name + SIDECAR_SUFFIX)).write_text(json.dumps(art.metadata()))
    return path


def test_eval_agrees_across_runtimes(lite0_digits, digits, tmp_path):
    ref = evaluate(lite0_digits, digits, split="val")
    onnx_path = _export_onnx(lite0_digits, tmp_path / "m.onnx")
    onnx_art = load_model(onnx_path)
    assert onnx_art.format is Format.ONNX and onnx_art.input_spec == lite0_digits.input_spec
    r_onnx = evaluate(onnx_art, digits, split="val")
    assert r_onnx["accuracy"] == pytest.approx(ref["accuracy"], abs=2 / 269)

    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(tmp_path / "m.xml"), compress_to_fp16=False)
    (tmp_path / ("m.xml" + SIDECAR_SUFFIX)).write_text(json.dumps(lite0_digits.metadata()))
    ov_art = load_model(tmp_path / "m.xml")
    r_ov = evaluate(ov_art, digits, split="val")
    assert r_ov["runtime"]["precision"].lower().endswith("f32")  # true fp32, not the CPU's bf16 default
    assert r_ov["accuracy"] == pytest.approx(ref["accuracy"], abs=2 / 269)
