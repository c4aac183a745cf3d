"""Recipes and `edgetl run`: validation before any work, caching keys, resume after a kill, budgets, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgetl.errors import ConfigError, InputFileError, UnknownNameError
from edgetl.recipe import list_recipes, load_recipe, parse_recipe, validate
from tests.conftest import run_cli_here


def _write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe))
    return p


BASE = {"name": "t", "data": "digits", "stages": [{"prune": {"criterion": "l1", "ratio": 0.3}}]}


def test_builtin_recipes_validate():
    names = set(list_recipes())
    assert {"cpu-openvino-int8", "jetson-tensorrt-int8", "mobile-executorch"} <= names
    for n in names:
        r = load_recipe(n, model="efficientnet_lite0")
        assert r.stages and r.fingerprint()


@pytest.mark.parametrize(
    "recipe, error, needle",
    [
        ({**BASE, "stagez": []}, UnknownNameError, "did you mean 'stages'"),
        ({**BASE, "stages": [{"prnue": {}}]}, UnknownNameError, "did you mean 'prune'"),
        ({**BASE, "stages": [{"prune": {"ratoi": 0.5}}]}, UnknownNameError, "did you mean 'ratio'"),
        ({**BASE, "stages": [{"export": {"formats": ["onnx"]}}, {"prune": {}}]}, ConfigError, "cannot come after"),
        ({**BASE, "stages": [{"export": {"formats": ["onxx"]}}]}, UnknownNameError, "did you mean 'onnx'"),
        ({**BASE, "stages": [{"bench": {"devices": ["jetson-orin-nanoo"]}}]}, UnknownNameError, "jetson-orin-nano"),
        ({**BASE, "budgets": {"max_accuracy_dorp": 1}}, UnknownNameError, "max_accuracy_drop"),
        ({**BASE, "stages": [{"prune": {"ratio": 1.5}}]}, ConfigError, "ratio"),
        ({**BASE, "stages": [{"prune": {}}, {"prune": {}}]}, ConfigError, "appears 2 times"),
    ],
)
def test_recipe_validation_errors(recipe, error, needle):
    with pytest.raises(error, match=needle):
        validate(parse_recipe(recipe))


def test_unknown_recipe_name_and_missing_file():
    with pytest.raises(UnknownNameError, match="cpu-openvino-int8"):
        load_recipe("cpu-openvino-int")
    with pytest.raises(InputFileError):
        load_recipe("nope/recipe.yaml")


def test_bad_recipe_on_cli_fails_before_any_work(tmp_path):
    p = _write(tmp_path, {**BASE, "stages": [{"prune": {"critrion": "lrp"}}]})
    out = tmp_path / "run"
    r = run_cli_here("run", "--recipe", str(p), "--model", "efficientnet_lite0", "-o", str(out))
    assert r.returncode == 2 and "did you mean 'criterion'" in r.stderr and not out.exists()


def test_cache_keys_follow_inputs_and_options(tmp_path, lite0_digits_path):
    from edgetl.pipeline import plan

    r1 = load_recipe(_write(tmp_path, {**BASE, "stages": [{"prune": {"criterion": "l1", "ratio": 0.3}},
                                                           {"export": {"formats": ["onnx"]}}]}),
                     model=str(lite0_digits_path))
    r2 = load_recipe(_write(tmp_path, {**BASE, "stages": [{"prune": {"criterion": "l1", "ratio": 0.4}},
                                                           {"export": {"formats": ["onnx"]}}]}, "r2.yaml"),
                     model=str(lite0_digits_path))
    p1, p1b, p2 = plan(r1), plan(r1), plan(r2)
    assert [s["key"] for s in p1] == [s["key"] for s in p1b]  # deterministic
    assert p1[0]["key"] != p2[0]["key"] and p1[1]["key"] != p2[1]["key"]  # a change flows downstream
    r3 = load_recipe(_write(tmp_path, {**BASE, "stages": r1.to_dict()["stages"]}, "r3.yaml"), model=str(lite0_digits_path), data="mnist5k")
    assert plan(r3)[0]["key"] != p1[0]["key"]  # other data, other key


def test_dry_run_prints_plan(tmp_path, lite0_digits_path):
    p = _write(tmp_path, BASE)
    r = run_cli_here("run", "--recipe", str(p), "--model", str(lite0_digits_path), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [s["stage"] for s in out["plan"]] == ["prune"] and out["plan"][0]["done"] is False


def test_run_dir_of_another_recipe_is_refused(tmp_path, lite0_digits_path):
    from edgetl.pipeline import _claim

    r1 = load_recipe(_write(tmp_path, BASE), model=str(lite0_digits_path))
    r2 = load_recipe(_write(tmp_path, {**BASE, "name": "other"}, "o.yaml"), model=str(lite0_digits_path))
    run_dir = tmp_path / "run"
    _claim(run_dir, r1)
    before = (run_dir / "run.json").read_text()
    with pytest.raises(ConfigError, match="holds a run of recipe 't'"):
        _claim(run_dir, r2)
    assert (run_dir / "run.json").read_text() == before


KILL_RECIPE = {
    "name": "kill-test",
    "data": "digits",
    "stages": [
        {"prune": {"criterion": "l1", "ratio": 0.3}},
        {"distill": {"student": "edgetl_tinycnn", "epochs": 6, "batch_size": 64}},
    ],
}


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path, lite0_digits_path):
    recipe = _write(tmp_path, KILL_RECIPE)
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "edgetl.cli", "run", "--recipe", str(recipe), "--model", str(lite0_digits_path),
            "-o", str(run_dir), "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list((run_dir / "work").glob("*/checkpoint.pt")) if (run_dir / "work").exists() else []
        if found:
            ckpt = found[0]
            break
        time.sleep(0.5)
    assert ckpt is not None, "distillation never wrote a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prune_dirs = list((run_dir / "stages").glob("01-prune-*"))
    assert len(prune_dirs) == 1 and (prune_dirs[0] / "stage.json").exists()
    assert not list((run_dir / "stages").glob("02-distill-*"))  # nothing half-written
    prune_mtime = (prune_dirs[0] / "stage.json").stat().st_mtime

    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)["report"]
    stages = {s["stage"]: s for s in rep["stages"]}
    assert stages["prune"]["cached"] is True and stages["distill"]["cached"] is False
    assert (prune_dirs[0] / "stage.json").stat().st_mtime == prune_mtime
    distill_meta = json.loads(next((run_dir / "stages").glob("02-distill-*/stage.json")).read_text())
    assert (distill_meta["summary"]["resumed_from_epoch"] or 0) >= 1
    for f in ("report.json", "report.md", "report.html"):
        assert (run_dir / f).exists()
    # a third run is all cache
    r = run_cli_here("run", "--recipe", str(recipe), "--model", str(lite0_digits_path), "-o", str(run_dir), "--json")
    assert all(s["cached"] for s in json.loads(r.stdout)["report"]["stages"])


def test_full_chain_report_has_every_artifact_and_a_recommendation(tmp_path, lite0_digits_path):
    recipe = _write(tmp_path, {
        "name": "chain", "data": "digits", "baselines": ["teacher-int8"],
        "stages": [
            {"distill": {"student": "edgetl_tinycnn", "epochs": 3}},
            {"quantize": {"backend": "openvino", "precision": "int8", "calib_samples": 100}},
            {"export": {"formats": ["onnx"]}},
            {"bench": {"devices": ["x86-cpu"], "threads": 1, "min_time_s": 0.05, "min_count": 5, "warmup_runs": 1,
                       "warmup_s": 0.0}},
        ]})
    run_dir = tmp_path / "run"
    r = run_cli_here("run", "--recipe", str(recipe), "--model", str(lite0_digits_path), "-o", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((run_dir / "report.json").read_text())
    roles = {a["role"] for a in rep["artifacts"]}
    # baseline:teacher-fp32: the teacher's own ONNX, the deployable baseline every recipe with an export measures
    assert roles == {"teacher", "compressed", "quantized", "export:onnx", "baseline:teacher-int8",
                     "baseline:teacher-fp32"}
    teacher = next(a for a in rep["artifacts"] if a["role"] == "teacher")
    student = next(a for a in rep["artifacts"] if a["role"] == "compressed")
    assert teacher["accuracy"] > 0.8 and teacher["agreement"] == 1.0
    assert student["params"] < teacher["params"] / 50  # the tiny CNN
    for a in rep["artifacts"]:
        assert 0 < a["p50_ms"] <= a["p90_ms"] <= a["p99_ms"] and a["samples"] >= 5
        assert 0.0 <= a["accuracy"] <= 1.0 and 0.0 <= a["agreement"] <= 1.0
    rec = rep["recommendation"]
    # "UNSETTLED: ...": the timings stayed contended and their lower tail did not settle the choice (run_choose)
    assert rec["line"].startswith(("ship ", "no artifact", "UNSETTLED: "))
    if "role" in rec:  # the recommended artifact is deployable, within the default 1-point budget, the fastest such
        within = [a for a in rep["artifacts"]
                  if a["deployable"] and 100 * (teacher["accuracy"] - a["accuracy"]) <= 1.0 + 1e-9]
        chosen = next(a for a in within if a["file"] == rec["file"])
        if rec["ranked_by"] == "p50":  # ranked by the median call; on contended timings by what ranked_by names
            assert chosen["p50_ms"] == min(a["p50_ms"] for a in within)
        else:
            assert set(rec["ranking_ms"]) == {a["file"] for a in within}
            assert rec["ranking_ms"][rec["file"]] == min(rec["ranking_ms"].values())
        assert rec["p90_ms"] == chosen["p90_ms"]
        assert rec["role"] != "teacher" and not Path(rec["file"]).is_absolute()  # a file inside the run directory
        assert (run_dir / rec["file"]).exists()
    md = (run_dir / "report.md").read_text()
    assert "Recommendation" in md or "no artifact" in md
    assert "| teacher |" in md
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
