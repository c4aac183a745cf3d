"""``edgetl run`` for a model that is no classifier: the dynamic-shape segmentation net of :mod:`tests.shapes`,
saved as a user would (a state dict of their own architecture, ``--arch tests.shapes:SegNet``), with an ``.npz`` of
MNIST digits it never trained on. Every score of the run is mIoU against the source model's argmax on held-out
inputs: the gates judge its drop, the report's column and recommendation name it, report.json says so; a prune
that collapses the masks is stopped by its gate with the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgetl.errors import ConfigError, UnknownNameError
from edgetl.recipe import load_recipe, parse_recipe
from tests import shapes
from tests.conftest import run_cli_here

ROOT = Path(__file__).resolve().parents[1]
ARCH = "tests.shapes:SegNet"
BENCH = {"devices": ["x86-cpu"], "threads": 1, "min_time_s": 0.05, "min_count": 5, "warmup_runs": 1, "warmup_s": 0.0}
# budgets in points of mIoU against the source (which scores 100 % against itself)
RECIPE = {"name": "seg-any", "task": "segmentation", "inputs": ["image:Nx1xHxW:float32"],
          "budgets": {"distill": 10, "quantize": 2, "export": 0.5, "max_accuracy_drop": 5, "ratios": [0.2]},
          "stages": [{"prune": {"criterion": "lrp", "ratio": 0.2}}, {"distill": {"epochs": 1}},
                     {"quantize": {"backend": "openvino", "precision": "int8"}},
                     {"export": {"formats": ["onnx", "openvino"]}}, {"bench": BENCH}]}


@pytest.fixture(scope="module")
def seg_files(tmp_path_factory):
    """The trained SegNet as a plain state dict, and 100 unseen MNIST digits as an .npz named after its input."""
    cache = tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"
    d = tmp_path_factory.mktemp("seg")
    torch.save(shapes.trained("SegNet", cache).state_dict(), d / "seg.pth")
    np.savez(d / "digits.npz", image=shapes.mnist(None)[0][4000:4100])  # SegNet trained on the first 2000
    return d / "seg.pth", d / "digits.npz"


def _recipe(tmp_path: Path, recipe: dict, name: str = "seg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe))
    return p


def test_segmentation_run_is_scored_by_miou_against_the_source(seg_files, tmp_path):
    model, data = seg_files
    run_dir = tmp_path / "run"
    r = run_cli_here("run", "--recipe", str(_recipe(tmp_path, RECIPE)), "--model", str(model), "--arch", ARCH,
                "--data", str(data), "-o", str(run_dir), "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((run_dir / "report.json").read_text())
    metric = rep["metric"]
    assert (metric["name"], metric["reference"], metric["split"], metric["task"]) == ("miou", "source", "test",
                                                                                     "segmentation")
    assert metric["label"] == "mIoU vs source %" and metric["samples"] == {"train": 60, "val": 20, "test": 20}
    rows = {a["role"]: a for a in rep["artifacts"]}
    assert {"teacher", "compressed", "quantized", "export:onnx", "export:openvino", "baseline:teacher-fp32"} <= set(rows)
    assert rows["teacher"]["accuracy"] == 1.0  # the source against itself
    for a in rows.values():  # every row: mIoU vs the source on the test split, per output with the headline named
        assert a["fidelity"]["headline"]["metric"] == "miou" and a["fidelity"]["headline"]["output"] == "output"
        assert a["accuracy"] == a["fidelity"]["headline"]["value"] and 0.5 < a["accuracy"] <= 1.0
        assert set(a["fidelity"]["outputs"]) == {"output"} and a["fidelity"]["samples"] == 20
        assert "mIoU vs source" in a["accuracy_split"] and a["agreement"] is None
    assert rows["compressed"]["params"] < rows["teacher"]["params"]  # pruned 20 %, recovered by distillation
    assert rows["compressed"]["accuracy"] < 1.0
    # the ratio search judged the pruned-distilled-quantized model by mIoU too
    assert rep["budget"]["met"] is True and rep["budget"]["tried"][0]["drop_points"] <= 5
    gates = {g["stage"]: g for g in rep["gates"]}
    assert set(gates) == {"distill", "quantize", "export:onnx", "export:openvino"}  # prune: judged after distill
    for g in gates.values():
        assert g["metric"] == "mIoU vs source" and g["samples"] == 20 and g["passed"]
        assert "points of mIoU vs source" in g["line"]
    assert gates["distill"]["before"] == 1.0 and gates["quantize"]["before"] == pytest.approx(gates["distill"]["after"])
    rec = rep["recommendation"]
    assert rec["metric"] == "miou" and "mIoU vs source" in rec["line"] and "top-1" not in rec["line"]
    assert 100 * (rec["teacher_accuracy"] - rec["accuracy"]) <= rep["accuracy_budget_points"] + 1e-9
    assert rows[rec["role"]]["deployable"] and (run_dir / rec["file"]).exists()
    md = (run_dir / "report.md").read_text()
    assert "| mIoU vs source % |" in md and "top-1 %" not in md and "output: cosine / SNR dB" in md
    out = json.loads(r.stdout)
    assert out["report"]["metric"]["name"] == "miou"


def test_a_prune_that_collapses_the_masks_is_stopped_by_its_gate(seg_files, tmp_path):
    from edgetl.pipeline import run_recipe

    model, data = seg_files
    recipe = load_recipe(_recipe(tmp_path, {"name": "seg-broken", "stages": [
        {"prune": {"criterion": "l1", "ratio": 0.9}}, {"quantize": {"backend": "openvino"}},
        {"export": {"formats": ["onnx"]}}]}), model=str(model), data=str(data), arch=ARCH, task="segmentation",
        inputs=["image:Nx1xHxW:float32"])
    res = run_recipe(recipe, tmp_path / "run")
    (v,) = res.report["gates"]
    assert v["stage"] == "prune" and not v["passed"] and not v["allowed"] and v["before"] == 1.0
    assert v["drop_points"] > v["budget_points"] == 2.0 and v["drop_points"] == pytest.approx(100 * (1 - v["after"]))
    assert v["line"].startswith(f"prune lost {v['drop_points']:.2f} points of mIoU vs source (100.00 % -> ")
    assert [s["stage"] for s in res.report["stages"]] == ["prune"]  # quantize and export built nothing on it
    assert any("quantize, export skipped" in w for w in res.report["warnings"])
    assert res.report["metric"]["name"] == "miou"


def test_contract_keys_parse_like_the_cli_flags_and_the_command_line_wins(tmp_path):
    base = {"name": "k", "stages": [{"prune": {"ratio": 0.2}}]}
    with pytest.raises(UnknownNameError, match="did you mean 'task'"):
        parse_recipe({**base, "tsak": "segmentation"})
    with pytest.raises(UnknownNameError, match="segmentation"):
        parse_recipe({**base, "task": "segmentaton"})
    with pytest.raises(ConfigError, match="inputs"):
        parse_recipe({**base, "inputs": {"image": "1x1x28x28"}})
    with pytest.raises(ConfigError, match="--input"):
        parse_recipe({**base, "inputs": ["image:1xQx"]})
    r = parse_recipe({**base, "task": "detection", "inputs": "image:Nx3x32x32", "roles": ["0:boxes:N,A,4:xyxy"]})
    assert r.inputs == ("image:Nx3x32x32",) and r.contract_flags().task.value == "detection"
    p = _recipe(tmp_path, {**base, "task": "detection"})
    over = load_recipe(p, task="segmentation", inputs=["image:Nx1xHxW"])
    assert over.task == "segmentation" and over.inputs == ("image:Nx1xHxW",)
    assert over.fingerprint() != load_recipe(p).fingerprint()  # another contract: another run directory
    plain = parse_recipe(base)
    assert plain.contract_keys() == {} and "task" not in plain.to_dict()  # a classifier recipe is unchanged


def test_a_generic_task_or_a_builtin_dataset_is_refused_in_one_line_before_any_work(seg_files, tmp_path):
    model, data = seg_files
    recipe = _recipe(tmp_path, {"name": "g", "stages": [{"prune": {"ratio": 0.2}}]})
    for extra, needle in ((["--task", "generic", "--data", str(data)], "generic task has only SNR"),
                          (["--task", "segmentation", "--data", "digits"], "reads its inputs from an .npz")):
        out = tmp_path / f"run-{extra[1]}"
        r = run_cli_here("run", "--recipe", str(recipe), "--model", str(model), "--arch", ARCH, "--input",
                    "image:Nx1xHxW:float32", *extra, "-o", str(out), cwd=ROOT)
        assert r.returncode == 2 and needle in r.stderr and not out.exists(), r.stderr[-2000:]
        assert len([ln for ln in r.stderr.strip().splitlines() if ln.strip()]) == 1
