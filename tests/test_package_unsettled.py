"""A run whose choice was UNSETTLED (contended timings, no clean record) still packages its provisional artifact,
but says so: in the package source's record (the manifest's ``measured``) and on the board README."""

from __future__ import annotations

import json

from edgetl.package.source import _from_run_dir
from edgetl.package.texts import _measured


def _run_dir(tmp_path, rec_extra):
    run = tmp_path / "run"
    onnx = run / "stages" / "05-bench-ab" / "x" / "m.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"not read here")
    rows = [{"role": "export:onnx", "device": "x86-cpu", "artifact": "m.onnx", "format": "onnx", "runtime": "onnxruntime",
             "precision": "fp32", "accuracy": 0.9, "p50_ms": 1.0, "p90_ms": 1.2}]
    rec = {"device": "x86-cpu", "role": "export:onnx", "artifact": "m.onnx", "file": "stages/05-bench-ab/x/m.onnx",
           "format": "onnx", "runtime": "onnxruntime", "teacher_accuracy": 0.91, "line": "UNSETTLED: ...", **rec_extra}
    (run / "report.json").write_text(json.dumps({"recommendation": rec, "artifacts": rows, "stages": [],
                                                 "accuracy_budget_points": 1.0, "data": "digits"}))
    return run


def test_an_unsettled_choice_is_packaged_with_a_warning(tmp_path):
    src = _from_run_dir(_run_dir(tmp_path, {"settled": False, "candidates": ["a.pte", "m.onnx"]}), lambda f: True)
    assert src.artifact_path.name == "m.onnx"
    warn = src.measured["unsettled"]
    assert "UNSETTLED" in warn and "a.pte, m.onnx" in warn and "idle machine" in warn
    ref = {"sample_accuracy": {"source": 0.9}, "sample_size": 8, "dataset": "digits"}
    assert any(line.startswith("Warning: the run's choice is UNSETTLED") for line in
               _measured({"measured": src.measured, "reference": ref}))


def test_a_settled_choice_carries_no_warning(tmp_path):
    src = _from_run_dir(_run_dir(tmp_path, {"settled": True}), lambda f: True)
    assert "unsettled" not in src.measured


def test_a_format_the_device_does_not_take_is_substituted_and_said(tmp_path):
    run = _run_dir(tmp_path, {"settled": True})
    report = json.loads((run / "report.json").read_text())
    pte = {**report["artifacts"][0], "role": "export:executorch", "artifact": "m.pte", "format": "executorch",
           "runtime": "executorch", "p50_ms": 0.8, "p90_ms": 0.9}
    report["artifacts"].append(pte)
    report["recommendation"].update(role="export:executorch", artifact="m.pte", format="executorch")
    (run / "report.json").write_text(json.dumps(report))
    src = _from_run_dir(run, lambda f: f != "executorch")
    assert src.artifact_path.name == "m.onnx"
    assert "recommends m.pte (executorch), which this device does not take; packaged m.onnx" in \
        src.measured["substituted"]
