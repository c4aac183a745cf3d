"""The run report answers "which file do I ship" from typed rows, with the measured statistics untouched.

Rows are built from real ``BenchResult`` dicts with known samples (the report logic, not timing, is under test).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.harness import BenchResult
from benchmarks.stats import LatencyStats
from edgetl.gates import check


def _result(path: Path | None, fmt: str, p: float, acc: float, *, contended: bool = False) -> dict:
    r = BenchResult(artifact=path.name if path else "teacher", format=fmt, runtime={"torch": "torch"}.get(fmt, "ort"),
                    precision="fp32", batch=1, threads=2, path=str(path) if path else None,
                    latency_ms=LatencyStats.from_samples([p, p * 1.1, p * 1.3, p * 2.0]), throughput=1.0,
                    device="x86-cpu", accuracy=acc, accuracy_source="digits test split (270 images)",
                    contended=contended, contention={"others_cores_max": 1.7 if contended else 0.0})
    return r.to_dict()


def _run(tmp_path: Path, rows: list[tuple[str, dict]], *, drop: float | None = None, gates=()):
    run_dir = tmp_path / "run"
    recipe = SimpleNamespace(budgets=SimpleNamespace(max_accuracy_drop=drop, target_latency_ms=None),
                             to_dict=lambda: {"name": "t"}, fingerprint=lambda: "abc", model="teacher.pt",
                             data="digits")
    ctx = SimpleNamespace(recipe=recipe, run_dir=run_dir, data=SimpleNamespace(name="digits"))
    bench = SimpleNamespace(kind="bench", key="k", cached=False, seconds=1.0, directory=run_dir / "stages" / "05-b",
                            summary={"results": [{"role": role, "device": "x86-cpu", "agreement": 1.0, "cost": None,
                                                  "result": r} for role, r in rows]})
    prune = SimpleNamespace(kind="prune", key="p", cached=True, seconds=2.0, directory=run_dir / "stages" / "01-p",
                            summary={"val_accuracy_after": 0.9, "scoring": [{"conservation": {"input_over_seed": 0.8}}]})
    from edgetl.run_report import build_run_report

    return build_run_report(ctx, [prune, bench], search=[], chosen_ratio=None, budget_met=None, gates=gates), run_dir


def test_the_recommendation_is_a_deployable_file_with_paths_relative_to_the_run(tmp_path):
    d = tmp_path / "run" / "stages" / "04-export-x" / "exports"
    rows = [("teacher", _result(None, "torch", 0.5, 0.92)),  # fastest, but PyTorch in memory: a baseline only
            ("compressed", _result(tmp_path / "run" / "stages" / "01-p" / "model.pt", "torch", 0.4, 0.92)),
            ("export:onnx", _result(d / "model.onnx", "onnx", 2.0, 0.915)),
            ("baseline:teacher-fp32", _result(d / "teacher.onnx", "onnx", 4.0, 0.92))]
    rep, run_dir = _run(tmp_path, rows)
    rec = rep.recommendation()
    assert rec["role"] == "export:onnx" and rec["file"] == "stages/04-export-x/exports/model.onnx"
    assert rec["line"].startswith("ship stages/04-export-x/exports/model.onnx (onnx") and "digits test split" in rec["line"]
    d = rep.to_dict()
    assert d["speedups"]["x86-cpu"]["vs_teacher_fp32_export"] == pytest.approx(2.0)
    # the statistics are the measured ones, not rebuilt from p50/p90
    stats = d["artifacts"][2]["result"]["latency_ms"]
    assert stats["p95"] != stats["p90"] and stats["std"] > 0 and stats["mean"] != stats["p50"]
    assert any("LRP relevance" in w for w in rep.warnings)


def test_no_artifact_within_budget_is_said_plainly(tmp_path):
    rows = [("teacher", _result(None, "torch", 5.0, 0.92)), ("export:onnx", _result(tmp_path / "x.onnx", "onnx", 1.0, 0.5))]
    rep, _ = _run(tmp_path, rows)
    assert rep.recommendation()["line"].startswith("no artifact met the budget")
    assert "role" not in rep.recommendation()


def test_a_stage_past_its_gate_is_never_recommended_and_is_warned_about(tmp_path):
    run = tmp_path / "run" / "stages"
    rows = [("teacher", _result(None, "torch", 5.0, 0.92)),
            ("quantized", _result(run / "03-q" / "model.int8.xml", "openvino", 0.1, 0.92)),
            ("export:onnx", _result(run / "04-e" / "model.onnx", "onnx", 2.0, 0.92))]
    v = check("quantize", before=0.95, after=0.80)
    rep, _ = _run(tmp_path, rows, gates=[v])
    assert rep.recommendation()["role"] == "export:onnx"
    assert v.line() in rep.warnings


def test_contended_rows_are_marked_and_speedups_keep_their_digits(tmp_path):
    rows = [("teacher", _result(None, "torch", 0.001, 0.92, contended=True)),
            ("export:onnx", _result(tmp_path / "run" / "m.onnx", "onnx", 0.8, 0.92))]
    rep, run_dir = _run(tmp_path, rows)
    from edgetl.run_report import render, write_reports

    md = render(rep, "md")
    assert "| teacher | - | torch |" in md and "contended" in md.split("## Stages")[0]
    assert "0.00125x vs teacher eager" in md and "0.0x" not in md
    assert "Speed-up not headlined (contended timings)" in md
    assert any("under contention" in w for w in rep.warnings) and "## Warnings" in md
    assert rep.recommendation()["reliable"] is False
    paths = write_reports(rep.to_dict(), run_dir)
    back = json.loads(paths["json"].read_text())
    assert back["artifacts"][0]["contended"] is True and back["warnings"] == rep.warnings
    page = paths["html"].read_text()
    assert "<li>" in page and "contended" in page and "data:image/png;base64," in page
    assert render(back, "md") == md  # one typed source: the JSON renders to the same Markdown


def test_a_file_recorded_inside_the_temporary_stage_directory_is_named_by_its_final_path(tmp_path):
    tmp_stage = tmp_path / "run" / "stages" / ".04-bench-f268.cw42txzd.part" / "baseline-teacher-int8"
    rows = [("teacher", _result(None, "torch", 5.0, 0.92)),
            ("baseline:teacher-int8", _result(tmp_stage / "model.int8.xml", "openvino", 1.0, 0.92))]
    rep, _ = _run(tmp_path, rows)
    assert rep.recommendation()["file"] == "stages/04-bench-f268/baseline-teacher-int8/model.int8.xml"
