"""``edgetl export`` as a user runs it: a real export with --json, and every bad-input case (exit code, one-line
message, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.conftest import run_cli_here


class SvdHead(nn.Module):
    """A layer with an op ONNX cannot express (singular values), inside a submodule."""

    def forward(self, x):
        return torch.linalg.svd(x.flatten(2))[1].flatten(1)


def test_export_onnx_and_tensorrt_bundle_with_dynamic_batch(lite0_digits_path, tmp_path):
    out = tmp_path / "deploy"
    r = run_cli_here("export", str(lite0_digits_path), "--format", "onnx,tensorrt", "-o", str(out), "--dynamic-batch",
                "--max-batch", "8", "--precision", "fp16", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)  # exactly one JSON object on stdout, nothing else
    assert res["ok"] and [e["format"] for e in res["exports"]] == ["onnx", "tensorrt"]
    onnx_row, trt_row = res["exports"]
    assert onnx_row["parity"]["max_rel_error"] < 1e-4 and onnx_row["parity"]["top1_agreement"] == 1.0
    assert "'digits' (recorded in the model's history)" in res["parity_inputs"]
    assert trt_row["artifact_format"] == "tensorrt-bundle" and trt_row["precision"] == "fp16"
    stem = lite0_digits_path.stem
    script = (out / f"{stem}_tensorrt" / "build.sh").read_text()
    assert (f"--onnx={stem}.onnx --saveEngine={stem}.engine --fp16 --minShapes=input:1x3x32x32 "
            "--optShapes=input:1x3x32x32 --maxShapes=input:8x3x32x32 --memPoolSize=workspace:1024 "
            "--timingCacheFile=timing.cache") in script
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["options"]["dynamic_batch"] is True
    # The delivered ONNX evaluates through the CLI as any model file does.
    r = run_cli_here("eval", str(out / f"{stem}.onnx"), "--data", "digits", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] > 0.5


@pytest.mark.parametrize(("args", "needle"), [
    (["--format", "onx"], "unknown export format 'onx'; did you mean 'onnx'?"),
    (["--format", "openvino", "--opset", "17"], "option --opset does not apply to openvino; it applies to: onnx"),
    (["--format", "openvino", "--precision", "int8"], "openvino cannot produce int8"),
    (["--format", "onnx", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["--format", "tensorrt", "--precision", "int8"], "export does not quantize: int8 comes from `edgetl quantize`"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(lite0_digits_path, tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli_here("export", str(lite0_digits_path), "-o", str(out), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_then_replaced_with_overwrite(lite0_digits_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli_here("export", str(lite0_digits_path), "--format", "ort", "-o", str(out), "--json")
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    assert json.loads(r.stdout)["ok"] is False
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = run_cli_here("export", str(lite0_digits_path), "--format", "ort", "-o", str(out), "--overwrite", "--no-parity")
    assert r.returncode == 0, r.stderr
    stem = lite0_digits_path.stem
    assert {p.name for p in out.iterdir()} >= {f"{stem}.ort", f"{stem}.ort.edgetl.json", "export.json"}
    assert not (out / "keep.txt").exists()


def test_missing_backend_names_the_pip_extra(lite0_digits_path, tmp_path):
    # A sitecustomize that makes executorch unimportable, as on an install without the [mobile] extra.
    fake_site = tmp_path / "site"
    fake_site.mkdir()
    (fake_site / "sitecustomize.py").write_text("import sys\nsys.modules['executorch'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_site), os.getcwd()])}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "edgetl.cli", "export", str(lite0_digits_path), "--format",
                        "onnx,executorch", "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "executorch is not installed" in r.stderr and "pip install 'edgetl[mobile]'" in r.stderr
    assert not out.exists()


def test_unconvertible_op_names_the_op_and_module_path(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), SvdHead()), nn.Linear(4, 2)).eval()
    path = tmp_path / "svd.pt"
    torch.save(model, path)
    path.with_name("svd.pt.edgetl.json").write_text(json.dumps(
        {"input_spec": {"shape": [3, 8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}, "labels": ["a", "b"]}))
    out = tmp_path / "out"
    # The subprocess must import this module to unpickle SvdHead, as pytest named it.
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    r = subprocess.run([sys.executable, "-m", "edgetl.cli", "export", str(path), "--unsafe-pickle", "--format",
                        "onnx", "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "operator aten::_linalg_svd has no ONNX conversion in module 1.1" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
