"""Third-party chatter goes to ``--verbose``: ``edgetl quantize --backend onnxruntime`` shows ONNX Runtime's own
messages (its calibrators' progress prints, its native "Removing initializer" warnings) only when asked."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.test_recipe_gates import small_cnn_path  # noqa: F401 - the fixture

ORT_LINES = ("Removing initializer", "Collecting tensor data", "Finding optimal threshold", "Number of tensors",
             "Number of histogram bins")


@pytest.mark.slow
def test_ort_quantize_is_quiet_unless_verbose(small_cnn_path, tmp_path):  # noqa: F811
    # percentile calibration runs ONNX Runtime's histogram calibrator, which prints its progress
    args = ["quantize", str(small_cnn_path), "--data", "digits", "--backend", "onnxruntime", "--calibration",
            "percentile", "--calib-samples", "40", "--max-float-layers", "0"]
    quiet = run_cli(*args, "-o", str(tmp_path / "a.onnx"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    for needle in ORT_LINES:
        assert needle not in quiet.stderr and needle not in quiet.stdout, needle
    assert "fp32 acc" in quiet.stdout + quiet.stderr  # edgetl's own table still prints

    quiet_json = run_cli(*args, "-o", str(tmp_path / "b.onnx"), "--json")
    assert quiet_json.returncode == 0, quiet_json.stderr[-2000:]
    assert json.loads(quiet_json.stdout)["ok"] is True  # exactly one JSON object on stdout
    assert not any(needle in quiet_json.stderr for needle in ORT_LINES)

    loud = run_cli(*args, "-o", str(tmp_path / "c.onnx"), "--json", "--verbose")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert json.loads(loud.stdout)["ok"] is True  # verbose or not, stdout carries only the result
    assert "Collecting tensor data" in loud.stderr and "Finding optimal threshold" in loud.stderr
