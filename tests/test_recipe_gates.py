"""Per-stage budgets in a recipe (``budgets: {quantize: 0.5, prune: 3, ...}``): validated, read by the pipeline's
quality gates (a stage's own ``max_drop`` still wins), and reported; the bench stage records final file paths.

The model is edgetl's 22k-parameter depthwise-separable CNN trained here on sklearn digits at 32x32 (about 13 s,
98 % val), cached per code version so the other gate tests reuse it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edgetl.errors import ConfigError, UnknownNameError
from edgetl.recipe import load_recipe, parse_recipe, validate

ROOT = Path(__file__).resolve().parents[1]
SMALL_CNN = dict(resolution=32, pretrained=False, head_epochs=0, epochs=8, unfreeze=(1.0,), lr=3e-3, batch_size=32,
                 adapt_bn=False, seed=0)
TINY_BENCH = {"devices": ["x86-cpu"], "threads": 1, "min_time_s": 0.05, "min_count": 5, "warmup_runs": 1,
              "warmup_s": 0.0}


def train_small_cnn(cache_dir: Path) -> Path:
    """edgetl_smallcnn trained on digits (seeded), saved as an edgetl checkpoint; cached by code version."""
    from edgetl.data import load_data
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.models import save_model

    h = hashlib.sha256(repr(sorted(SMALL_CNN.items())).encode())
    for name in ("finetune.py", "train.py", "data.py", "models.py", "students.py", "artifact.py"):
        h.update((ROOT / "edgetl" / name).read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"smallcnn_digits-{h.hexdigest()[:16]}.pt"
    with open(cache_dir / "smallcnn.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            save_model(finetune("edgetl_smallcnn", load_data("digits", seed=0), FinetuneConfig(**SMALL_CNN)), target)
    return target


@pytest.fixture(scope="session")
def small_cnn_path(tmp_path_factory) -> Path:
    return train_small_cnn(tmp_path_factory.getbasetemp().parent / "edgetl-fixtures")


def _recipe(tmp_path: Path, body: dict, model: Path, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body))
    return load_recipe(p, model=str(model))


# --------------------------------------------------------------------------- validation
def test_stage_budgets_are_validated_and_listed():
    base = {"name": "b", "data": "digits", "stages": [{"quantize": {"backend": "onnxruntime"}}]}
    r = validate(parse_recipe({**base, "budgets": {"quantize": 0.5, "prune": 3, "export": 0}}))
    assert r.budgets.stages == {"quantize": 0.5, "prune": 3.0, "export": 0.0}
    assert not r.budgets.active  # per-stage budgets gate; they start no ratio search
    with pytest.raises(UnknownNameError, match="did you mean 'quantize'"):
        parse_recipe({**base, "budgets": {"quantise": 0.5}})
    with pytest.raises(ConfigError, match=r"budgets.quantize .* got -1"):
        parse_recipe({**base, "budgets": {"quantize": -1}})
    with pytest.raises(ConfigError, match="budgets.distill"):
        parse_recipe({**base, "budgets": {"distill": "lots"}})
    plain = validate(parse_recipe(base))
    assert plain.budgets.stages == {} and plain.fingerprint() != r.fingerprint()


def _gate_ctx(recipe, **kw):
    return SimpleNamespace(recipe=recipe, data=SimpleNamespace(num_classes=10), verdicts=[], stopped=None,
                           source="source", current="current", **kw)


def test_gates_read_the_recipe_budgets_and_a_stage_max_drop_wins():
    from edgetl.run_gates import gate

    def run(budgets, stages, kind, summary):
        r = validate(parse_recipe({"name": "g", "budgets": budgets, "stages": stages}))
        ctx = _gate_ctx(r)
        gate(ctx, SimpleNamespace(kind=kind, summary=summary))
        return ctx

    q = {"fp32_accuracy": 0.95, "accuracy": 0.942, "agreement": 0.97, "split": "val"}  # 0.8 points lost
    assert run({}, [{"quantize": {}}], "quantize", q).verdicts[0].passed  # default 1.0
    tight = run({"quantize": 0.5}, [{"quantize": {}}], "quantize", q).verdicts[0]
    assert not tight.passed and tight.budget_points == 0.5 and "budget 0.5" in tight.line()
    own = run({"quantize": 0.5}, [{"quantize": {"max_drop": 2.0}}], "quantize", q).verdicts[0]
    assert own.passed and own.budget_points == 2.0
    p = {"val_accuracy_before": 0.95, "val_accuracy_after": 0.925, "ratio": 0.3}  # 2.5 points: default 2 fails
    assert not run({}, [{"prune": {}}], "prune", p).verdicts[0].passed
    loose = run({"prune": 3}, [{"prune": {}}], "prune", p)
    assert loose.verdicts[0].passed and loose.stopped is None
    e = {"exports": [{"format": "onnx", "val_accuracy": 0.94, "source_val_accuracy": 0.95, "samples": 270},
                     {"format": "tensorrt", "val_accuracy": None, "source_val_accuracy": None}]}
    [v] = run({"export": 0.5}, [{"export": {"formats": ["onnx"]}}], "export", e).verdicts
    assert v.stage == "export:onnx" and not v.passed and v.budget_points == 0.5
    assert run({}, [{"export": {"formats": ["onnx"]}}], "export", e).verdicts[0].passed is False  # default 0.5 too
    assert run({"export": 2}, [{"export": {"formats": ["onnx"]}}], "export", e).verdicts[0].passed


def _destroyed_calibration(real):
    """Calibration images turned to one flat grey: every activation range is that of a blank image, so real
    inputs saturate (a deliberately broken quantization of a real model)."""
    def select(data, *, samples, seed):
        calib = real(data, samples=samples, seed=seed)
        return dataclasses.replace(calib, images=calib.images * 0 + 128)

    return select


QUANTIZE = {"backend": "onnxruntime", "precision": "int8", "calibration": "minmax", "calib_samples": 30,
            "max_float_layers": 0}


@pytest.mark.slow
def test_a_tight_quantize_budget_fails_the_gate_and_the_report_says_so(small_cnn_path, tmp_path, monkeypatch):
    import edgetl.quantize.quantizer as qz
    from edgetl.pipeline import run_recipe

    monkeypatch.setattr(qz, "select_calibration", _destroyed_calibration(qz.select_calibration))
    body = {"name": "tight-q", "data": "digits", "budgets": {"quantize": 0.5},
            "stages": [{"quantize": QUANTIZE}, {"export": {"formats": ["onnx"]}}, {"bench": TINY_BENCH}]}
    run_dir = tmp_path / "run"
    rep = run_recipe(_recipe(tmp_path, body, small_cnn_path), run_dir).report
    on_disk = json.loads((run_dir / "report.json").read_text())
    [q] = [g for g in on_disk["gates"] if g["stage"] == "quantize"]
    assert q["budget_points"] == 0.5 and q["passed"] is False and q["drop_points"] > 0.5
    assert q["line"] in on_disk["warnings"] and "quantized" in on_disk["blocked_roles"]
    # "UNSETTLED: ...": the timings stayed contended and their lower tail did not settle the choice (run_choose)
    assert rep["recommendation"]["line"].startswith(("ship ", "no artifact met the budget", "UNSETTLED: "))
    assert rep["recommendation"].get("role") != "quantized"
    md = (run_dir / "report.md").read_text()
    assert "## Quality gates" in md and f"FAIL {q['line']}" in md and "budget 0.5: over budget" in md
    # the export gate judged the fp32 ONNX against the model it came from: the same computation
    [e] = [g for g in on_disk["gates"] if g["stage"] == "export:onnx"]
    assert e["passed"] and e["budget_points"] == 0.5 and e["drop_points"] == pytest.approx(0.0, abs=0.5)

    # the bench stage's own files (the teacher's fp32 baseline) are recorded at their final path, not at the
    # temporary directory the stage ran in
    bench_dir = next((run_dir / "stages").glob("*-bench-*"))
    results = json.loads((bench_dir / "results.json").read_text())
    paths = [r["result"]["path"] for r in results if r["result"].get("path")]
    baseline = next(r["result"]["path"] for r in results if r["role"] == "baseline:teacher-fp32")
    assert Path(baseline).is_relative_to(bench_dir) and Path(baseline).exists()
    assert all(".part" not in p and Path(p).exists() for p in paths), paths


@pytest.mark.slow
def test_a_loose_recipe_budget_lets_the_same_drop_pass(small_cnn_path, tmp_path, monkeypatch):
    import edgetl.quantize.quantizer as qz
    from edgetl.pipeline import run_recipe

    monkeypatch.setattr(qz, "select_calibration", _destroyed_calibration(qz.select_calibration))
    body = {"name": "loose-q", "data": "digits", "budgets": {"quantize": 100}, "stages": [{"quantize": QUANTIZE}]}
    rep = run_recipe(_recipe(tmp_path, body, small_cnn_path), tmp_path / "run").report
    [q] = rep["gates"]
    assert q["stage"] == "quantize" and q["budget_points"] == 100 and q["passed"] is True
    assert q["drop_points"] > 1.0  # the default budget (1 point) would have failed it
    assert "quantized" not in rep["blocked_roles"]
    summary = next(s for s in rep["stages"] if s["stage"] == "quantize")["summary"]
    assert summary["size_bytes"] < summary["fp32_size_bytes"]  # 22k parameters: int8 is smaller, nothing to say
    assert not any("not smaller than its fp32 source" in w for w in rep["warnings"])


def _narrow_cnn(path: Path) -> Path:
    """edgetl's TinyCNN at widths 4-8-8-8 (634 parameters), trained for 2 epochs on digits: a model so small
    that int8's Quantize/DequantizeLinear nodes outweigh what its int8 weights save."""
    from edgetl.data import load_data
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.models import load_model, save_model
    from edgetl.students import TinyCNN

    data = load_data("digits", seed=0)
    base = load_model("edgetl_tinycnn", num_classes=10, pretrained=False, labels=list(data.classes))
    base = dataclasses.replace(base, model=TinyCNN(10, widths=(4, 8, 8, 8)).eval())
    cfg = FinetuneConfig(**{**SMALL_CNN, "epochs": 2})
    return save_model(finetune(base, data, cfg), path)


@pytest.mark.slow
def test_an_ort_int8_file_larger_than_its_fp32_source_says_why(tmp_path):
    from edgetl.pipeline import run_recipe

    model = _narrow_cnn(tmp_path / "narrow.pt")
    body = {"name": "sizes", "data": "digits", "budgets": {"quantize": 100},
            "stages": [{"quantize": {"backend": "onnxruntime", "precision": "int8", "calib_samples": 100}}]}
    result = run_recipe(_recipe(tmp_path, body, model), tmp_path / "run")
    [q] = result.stages
    size, fp32 = q.summary["size_bytes"], q.summary["fp32_size_bytes"]
    assert size > fp32 > 0  # measured: about 17.8 kB of int8 QDQ against 6.2 kB of fp32 ONNX
    note = q.summary["size_note"]
    assert "is not smaller than its fp32 source" in note and "Quantize/DequantizeLinear nodes" in note
    assert note in q.summary["warnings"]  # the stage's record
    stage_json = json.loads((q.directory / "stage.json").read_text())
    assert stage_json["summary"]["size_note"] == note
    assert f"quantize: {note}" in result.report["warnings"]  # and the report
    assert note in (tmp_path / "run" / "report.md").read_text()


# --------------------------------------------------------------------------- latency target in a recipe (#15)
def test_a_prune_latency_target_in_a_recipe_is_validated():
    base = {"name": "lat", "data": "digits"}

    def recipe(prune, **extra):
        return validate(parse_recipe({**base, **extra, "stages": [{"prune": prune}]}))

    r = recipe({"criterion": "l1", "target_latency_ms": 2.5, "device": "x86-cpu", "runtime": "onnxruntime",
                "threads": 1, "latency_cache": "/tmp/x"})
    lat = r.stage("prune").latency
    assert lat.target_latency_ms == 2.5 and lat.runtime == "onnxruntime" and lat.threads == 1
    assert r.stage("prune").config.target_latency_ms is None  # the latency model is measured at run time
    assert recipe({"criterion": "l1"}).stage("prune").latency is None
    with pytest.raises(UnknownNameError, match="did you mean 'device'"):
        recipe({"target_latency_ms": 2.5, "devcie": "x86-cpu"})
    with pytest.raises(ConfigError, match="target_latency_ms or ratio, not both"):
        recipe({"target_latency_ms": 2.5, "ratio": 0.5})
    with pytest.raises(ConfigError, match="add target_latency_ms"):
        recipe({"runtime": "openvino"})
    with pytest.raises(ConfigError, match="positive number of milliseconds"):
        recipe({"target_latency_ms": -1})
    with pytest.raises(ConfigError, match="latency table measures on"):
        recipe({"target_latency_ms": 2.5, "runtime": "executorch"})
    with pytest.raises(UnknownNameError, match="x86-cpu"):
        recipe({"target_latency_ms": 2.5, "device": "x86-cpuu"})
    with pytest.raises(ConfigError, match="use one or the other"):
        recipe({"target_latency_ms": 2.5}, budgets={"max_accuracy_drop": 1.0})


@pytest.mark.slow
def test_a_recipe_prune_stage_prunes_to_a_measured_latency_target(small_cnn_path, tmp_path):
    """A generous target (1 s): the allocator keeps every channel and the first measurement meets it. What is
    checked is the wiring: the recipe keys reach the latency table and the harness, and the stage record and the
    report show predicted against measured (no speed is asserted: the machine is shared)."""
    from edgetl.pipeline import run_recipe

    prune = {"criterion": "l1", "target_latency_ms": 1000, "device": "x86-cpu", "runtime": "onnxruntime",
             "threads": 1, "latency_cache": str(tmp_path / "cache"), "quick_latency": True, "samples_per_class": 2}
    body = {"name": "lat", "data": "digits", "stages": [{"prune": prune}]}
    result = run_recipe(_recipe(tmp_path, body, small_cnn_path), tmp_path / "run")
    [p] = result.stages
    lat = p.summary["latency_target"]
    assert lat["met"] is True and lat["target_ms"] == 1000 and lat["runtime"] == "onnxruntime"
    assert lat["threads"] == 1 and lat["device"] == "x86-cpu" and lat["host"] == "local"
    assert 0 < lat["measured_p50_ms"] <= 1000 and 0 < lat["unpruned_p50_ms"]
    [it] = lat["iterations"]
    assert it["predicted_ms"] <= it["budget_ms"] == 1000 and it["measured_ms"] == lat["measured_p50_ms"]
    assert lat["table"]["measured_points"] > 0 and list((tmp_path / "cache").iterdir())  # measured, cached
    assert p.summary["latency_allocation"]["feasible"] is True
    short = next(s for s in result.report["stages"] if s["stage"] == "prune")["summary"]["latency_target"]
    assert short["predicted_ms"] == lat["predicted_ms"] and short["measured_p50_ms"] == lat["measured_p50_ms"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "**Latency target (prune):** p50 1000 ms at batch 1 on onnxruntime fp32" in md
    assert f"measured {lat['measured_p50_ms']:.4g} ms (met after 1 iteration(s))" in md
