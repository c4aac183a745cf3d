"""A recipe whose prune stage collapses the model: the branch stops, the report says why and recommends a
working artifact (the teacher's own fp32 export), never the collapsed one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.test_recipe_gates import TINY_BENCH, small_cnn_path  # noqa: F401 - the fixture

COLLAPSE = {"name": "collapse", "data": "digits",
            "stages": [{"prune": {"criterion": "l1", "ratio": 0.9, "max_layer_ratio": 0.95, "round_to": 1}},
                       {"quantize": {"backend": "onnxruntime", "precision": "int8", "calib_samples": 50}},
                       {"export": {"formats": ["onnx"]}},
                       {"bench": TINY_BENCH}]}


@pytest.mark.slow
def test_a_collapsing_prune_ends_with_a_working_recommendation(small_cnn_path, tmp_path):  # noqa: F811
    from edgetl.pipeline import run_recipe
    from edgetl.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(COLLAPSE))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(p, model=str(small_cnn_path)), run_dir)
    rep = json.loads((run_dir / "report.json").read_text())

    [g] = [g for g in rep["gates"] if g["stage"] == "prune"]
    assert g["passed"] is False and g["allowed"] is False and g["drop_points"] > g["budget_points"]
    assert g["before"] > 0.9  # the teacher had learned the task; pruning 90 % of its channels broke it
    collapsed = g["after"] <= 0.1 + 0.25 * (g["before"] - 0.1)
    assert ("collapsed the model" in (g["note"] or "")) == collapsed
    assert [s["stage"] for s in rep["stages"]] == ["prune", "bench"]  # quantize and export were skipped
    assert any("quantize, export skipped" in w for w in rep["warnings"])
    assert g["line"] in rep["warnings"]

    roles = {a["role"] for a in rep["artifacts"]}
    assert roles == {"teacher", "baseline:teacher-fp32"}  # nothing built on the collapsed model is measured
    assert "compressed" in rep["blocked_roles"]
    rec = rep["recommendation"]
    teacher = next(a for a in rep["artifacts"] if a["role"] == "teacher")
    baseline = next(a for a in rep["artifacts"] if a["role"] == "baseline:teacher-fp32")
    if 100 * (teacher["accuracy"] - baseline["accuracy"]) <= rep["accuracy_budget_points"]:
        assert rec["role"] == "baseline:teacher-fp32" and rec["format"] == "onnx"
        assert (run_dir / rec["file"]).exists() and not Path(rec["file"]).is_absolute()
        assert rec["line"].startswith(f"ship {rec['file']} (onnx")
    else:  # the ONNX export lost accuracy against eager: then nothing is recommended, plainly
        assert rec["line"].startswith("no artifact met the budget")
    md = (run_dir / "report.md").read_text()
    assert f"**Recommendation:** {rec['line']}" in md
    assert "FAIL prune lost" in md and "quantize, export skipped" in md
    assert "| compressed |" not in md and "| quantized |" not in md
