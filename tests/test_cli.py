"""The command line as a user meets it: help, --json contracts, one-line errors, exit codes, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli, run_cli_here

SUBCOMMANDS = ["finetune", "prune", "distill", "quantize", "export", "eval", "bench", "run", "devices", "report",
               "models", "datasets"]


def test_help_lists_every_subcommand():
    r = run_cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert name in r.stdout, name


def test_import_edgetl_loads_no_runtime_backend():
    code = ("import sys, edgetl, edgetl.cli; "
            "heavy = [m for m in ('onnxruntime', 'openvino', 'tensorrt', 'executorch', 'onnx', 'nncf', 'zennit',"
            " 'torch_pruning') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_models_and_datasets_json():
    r = run_cli_here("models", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = {m["name"]: m for m in out["models"]}
    assert names["efficientnet_lite0"]["pretrained"] is True and "resnet18" in names
    r = run_cli_here("datasets", "--json")
    out = json.loads(r.stdout)
    assert {d["name"] for d in out["datasets"]} >= {"mnist5k", "digits"}


def test_eval_json_on_saved_model(lite0_digits_path):
    r = run_cli_here("eval", str(lite0_digits_path), "--data", "digits", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert out["ok"] is True and out["split"] == "test" and out["samples"] == 269
    assert 0.8 <= out["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["eval", "missing.pt", "--data", "digits"], 2, "not found"),
        (["eval", "resnt18", "--data", "digits"], 2, "did you mean 'resnet18'"),
        (["eval", "resnet18", "--data", "mnist6k"], 2, "did you mean 'mnist5k'"),
        (["eval", "resnet18", "--data", "digits", "--split", "tset"], 2, "did you mean 'test'"),
        (["eval", "efficientnet_lite0", "--data", "digits"], 2, "1000 outputs but dataset 'digits' has 10"),
    ],
)
def test_bad_input_is_one_line_with_exit_code(args, code, needle):
    r = run_cli_here(*args)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_bad_input_in_json_mode_still_prints_one_json_object():
    r = run_cli_here("eval", "missing.pt", "--data", "digits", "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["ok"] is False and "not found" in out["error"]


def test_pickled_module_refused_on_the_cli(tmp_path):
    import torch

    torch.save(torch.nn.Linear(4, 2), tmp_path / "full.pt")
    r = run_cli_here("eval", str(tmp_path / "full.pt"), "--data", "digits")
    assert r.returncode == 2 and "--unsafe-pickle" in r.stderr


def test_finetune_failure_leaves_no_output(tmp_path):
    out = tmp_path / "t.pt"
    r = run_cli_here("finetune", "--model", "efficientnet_lite0", "--data", str(tmp_path / "nodata"), "-o", str(out))
    assert r.returncode == 2 and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_finetune_refuses_to_overwrite(tmp_path):
    out = tmp_path / "t.pt"
    out.write_text("keep me")
    r = run_cli_here("finetune", "--data", "digits", "-o", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_text() == "keep me"


def test_run_without_recipe_is_a_usage_error_with_one_json_object():
    r = run_cli_here("run", "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["ok"] is False and "--recipe" in out["error"]
