"""The latency harness on a real trained model: statistics, runners, profiles, store, report, trtexec, CLI.

Timing values are only checked for sanity (positive, ordered percentiles): speed is shown by the suites in
``benchmarks/suites``, never by unit tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bench_exports import export_onnx, export_openvino
from conftest import run_cli_here

QUICK = dict(threads=1, min_time_s=0.05, min_count=5, warmup_s=0.02, warmup_runs=1)
QUICK_CLI = ["--min-time", "0.05", "--min-count", "5", "--warmup", "0.02", "--warmup-runs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def exports(lite0_digits, lite0_digits_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_exports")
    return {"torch": lite0_digits_path, "onnx": export_onnx(lite0_digits, d), "openvino": export_openvino(lite0_digits, d)}


def _sane(stats) -> None:
    assert stats.count >= 5
    assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max
    assert stats.std >= 0 and stats.min <= stats.mean <= stats.max


# --------------------------------------------------------------------------- statistics
def test_percentiles_on_known_samples():
    from benchmarks.stats import LatencyStats, percentile

    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 90) == pytest.approx(90.1)
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(0)
    data = sorted(rng.gamma(2.0, 1.5, size=997).tolist())
    for q in (1, 50, 90, 95, 99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)
    s = LatencyStats.from_samples([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (s.count, s.mean, s.min, s.max, s.p50) == (8, 5.0, 2.0, 9.0, 4.5)
    assert s.std == pytest.approx(math.sqrt(32 / 7))  # sample std (n - 1)
    assert LatencyStats.from_ns([1_000_000, 3_000_000]).p50 == 2.0
    assert LatencyStats.from_dict(s.to_dict()) == s


def test_background_load_is_what_others_used():
    from benchmarks.contention import Snapshot, between

    # Machine busy 3.0 CPU-s, this process 1.0 CPU-s, over 2 s of wall time: others used 1 core.
    assert between(Snapshot(0.0, 5.0, 10.0), Snapshot(2.0, 6.0, 13.0)).others_cores == pytest.approx(1.0)
    assert between(Snapshot(0.0, 5.0, 10.0), Snapshot(2.0, 6.0, 11.0)).others_cores == 0.0
    assert between(Snapshot(0.0, 1.0, None), Snapshot(1.0, 1.0, 1.0)).others_cores is None


def test_statistics_reject_bad_samples():
    from benchmarks.stats import LatencyStats, percentile
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError):
        LatencyStats.from_samples([])
    with pytest.raises(ConfigError):
        LatencyStats.from_samples([1.0, float("nan")])
    with pytest.raises(ConfigError):
        percentile([1.0], 101)


# --------------------------------------------------------------------------- runners on the real model
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch", "onnx", "openvino"])
def test_each_runner_measures_the_trained_model(fmt, exports, lite0_digits):
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile
    from edgetl.models import load_model

    art = load_model(str(exports[fmt]))
    r = measure(art, BenchConfig(**QUICK), profile=load_profile("x86-cpu"), source_path=exports[fmt])
    _sane(r.latency_ms)
    assert r.format == fmt and r.device == "x86-cpu" and r.batch == 1 and r.threads == 1
    assert r.inputs.startswith("data:digits/test")  # the dataset the model was fine-tuned on, not noise
    assert r.runner["outputs_finite"] is True
    assert r.cold_start_ms == pytest.approx(r.load_ms + r.first_inference_ms)
    assert r.model_size_bytes and r.model_size_bytes > 1_000_000
    assert r.accuracy == pytest.approx(lite0_digits.last_metric("test_accuracy"))
    assert r.env["versions"]["numpy"] and r.env["logical_cores"] >= 1 and r.env["cpu"]
    assert r.throughput > 0
    assert r.env["background_load_cores"] >= 0 and isinstance(r.warnings, list)
    if fmt == "openvino":
        # True f32 unless asked, and the precision that ran is recorded; the runtime's own latency too.
        assert r.precision == "fp32" and r.runner["precision"].lower() == "f32"
        assert r.runner["execution_precisions"].get("f32", 0) > 0
        _sane(r.runtime_latency_ms)
    if fmt == "onnx":
        assert r.runner["spinning"] is False and r.runner["providers"] == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_runner_outputs_agree_with_pytorch(exports, lite0_digits):
    """The runners compute the same logits as the source module on real inputs (so timings are of real work)."""
    import torch

    from benchmarks.harness import real_inputs
    from benchmarks.runners import open_runner
    from edgetl.models import load_model

    batches, _ = real_inputs(lite0_digits, batch=1, count=2)
    with torch.inference_mode():
        ref = lite0_digits.model.eval()(torch.from_numpy(batches[1])).numpy()
    for fmt in ("onnx", "openvino"):
        with open_runner(load_model(str(exports[fmt])), threads=1) as r:
            out = r.run(batches[1])
        np.testing.assert_allclose(out, ref, atol=2e-3, rtol=1e-3)


@pytest.mark.slow
def test_batch_sizes_and_static_batch_errors(exports):
    from benchmarks.harness import BenchConfig, measure
    from edgetl.errors import ConfigError
    from edgetl.models import load_model

    r = measure(load_model(str(exports["onnx"])), BenchConfig(**{**QUICK, "batch": 4}))
    assert r.batch == 4 and r.throughput > 0
    _sane(r.latency_ms)
    r = measure(load_model(str(exports["openvino"])), BenchConfig(**{**QUICK, "batch": 2}))  # reshaped to 2
    assert r.batch == 2
    static = exports["onnx"].parent / "static.onnx"
    import onnx

    m = onnx.load(str(exports["onnx"]))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(static))
    (static.parent / (static.name + ".edgetl.json")).write_text(
        (exports["onnx"].parent / (exports["onnx"].name + ".edgetl.json")).read_text())
    with pytest.raises(ConfigError, match="static batch of 1"):
        measure(load_model(str(static)), BenchConfig(**{**QUICK, "batch": 3}))


def test_photo_inputs_are_real_images(lite0_digits):
    from benchmarks.harness import InputSource, real_inputs

    batches, origin = real_inputs(lite0_digits, batch=2, count=3, source=InputSource.PHOTOS)
    assert origin.startswith("photos:skimage.data(astronaut")
    assert len(batches) == 3 and batches[0].shape == (2, *lite0_digits.input_spec.shape)
    assert batches[0].dtype == np.float32 and batches[0].flags.c_contiguous
    # Real photos have structure: neighbouring pixels correlate strongly, unlike noise.
    x = batches[0][0, 0]
    corr = np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]
    assert corr > 0.5


@pytest.mark.slow
def test_torch_compile_mode_computes_what_eager_does(lite0_digits):
    import torch

    from benchmarks.harness import real_inputs
    from benchmarks.runners import open_runner

    batches, _ = real_inputs(lite0_digits, batch=1, count=2)
    with torch.inference_mode():
        ref = lite0_digits.model.eval()(torch.from_numpy(batches[0])).numpy()
    with open_runner(lite0_digits, threads=1, extra={"compile": True}) as r:
        assert r.describe()["mode"] == "compile:default"
        out = r.run(batches[0])  # compiles here (inductor needs a C++ compiler, as on this machine)
        np.testing.assert_allclose(r.run(batches[0]), out, atol=1e-6)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)


def test_tensorrt_and_litert_runners_import_without_their_runtimes(tmp_path, lite0_digits):
    import importlib

    from benchmarks.runners import open_runner
    from edgetl.artifact import Artifact
    from edgetl.errors import MissingDependencyError

    importlib.import_module("benchmarks.runners.tensorrt_runner")
    importlib.import_module("benchmarks.runners.litert_runner")
    if importlib.util.find_spec("tensorrt") is None:
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"x")
        art = Artifact(format="tensorrt", path=engine, input_spec=lite0_digits.input_spec, labels=lite0_digits.labels)
        with pytest.raises(MissingDependencyError, match="tensorrt"):
            open_runner(art)


# --------------------------------------------------------------------------- profiles
def test_builtin_profiles_load_and_validate():
    from benchmarks.profiles import Method, list_profiles, load_profile

    profiles = list_profiles()
    for name in ("x86-cpu", "raspberry-pi-5", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "android-arm64"):
        assert name in profiles
    orin = load_profile("jetson-orin-nano")
    assert "trtexec" in orin.runtimes and orin.power_mode_cmd == "nvpmodel -q"
    assert orin.connection.method is Method.SSH
    assert load_profile("x86-cpu").runtime_for(__import__("edgetl").artifact.Format.OPENVINO) == "openvino"


def test_profile_with_a_wrong_key_suggests_the_nearest(tmp_path):
    from benchmarks.profiles import load_profile
    from edgetl.errors import ConfigError, UnknownNameError

    bad = tmp_path / "my-board.yaml"
    bad.write_text("name: my-board\nthread: 4\nruntimes: [onnxruntime]\n")
    with pytest.raises(UnknownNameError, match="did you mean 'threads'"):
        load_profile(str(bad))
    bad.write_text("runtimes: [onnxruntme]\n")
    with pytest.raises(UnknownNameError, match="did you mean 'onnxruntime'"):
        load_profile(str(bad))
    bad.write_text("connection: {prot: 22}\n")
    with pytest.raises(UnknownNameError, match="did you mean 'port'"):
        load_profile(str(bad))
    bad.write_text("threads: -2\n")
    with pytest.raises(ConfigError, match="threads"):
        load_profile(str(bad))
    with pytest.raises(UnknownNameError, match="did you mean 'jetson-orin-nano'"):
        load_profile("jetson-orin-nanoo")


def test_user_profile_dir_adds_and_overrides(tmp_path, monkeypatch):
    from benchmarks.profiles import list_profiles, load_profile

    (tmp_path / "lab-pi.yaml").write_text(
        "description: the Pi on my desk\narch: aarch64\nthreads: 4\nformats: [onnx]\nruntimes: [onnxruntime]\n"
        "connection: {method: ssh, host: pi@lab-pi, remote_edgetl: /home/pi/venv/bin/edgetl}\n")
    monkeypatch.setenv("EDGETL_DEVICES_DIR", str(tmp_path))
    p = load_profile("lab-pi")
    assert p.threads == 4 and p.connection.host == "pi@lab-pi" and p.source.endswith("lab-pi.yaml")
    assert "x86-cpu" in list_profiles()


def test_profile_refuses_a_format_it_cannot_run(exports):
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile
    from edgetl.errors import ConfigError
    from edgetl.models import load_model

    with pytest.raises(ConfigError, match="does not run openvino"):
        measure(load_model(str(exports["openvino"])), BenchConfig(**QUICK), profile=load_profile("jetson-orin-nano"))


# --------------------------------------------------------------------------- trtexec parsing
def _trtexec_records(n_warm: int, n: int, warmup_ms: float):
    recs, t = [], 0.0
    for i in range(n_warm + n):
        start = t if i < n_warm else warmup_ms + t
        h2d, comp, d2h = 0.05, 1.0 + i % 5 * 0.25, 0.05
        recs.append({"startEnqMs": start, "endEnqMs": start + 0.01, "startH2dMs": start, "endH2dMs": start + h2d,
                     "startComputeMs": start + h2d, "endComputeMs": start + h2d + comp,
                     "startD2hMs": start + h2d + comp, "endD2hMs": start + h2d + comp + d2h, "h2dMs": h2d,
                     "computeMs": comp, "d2hMs": d2h, "latencyMs": h2d + comp + d2h, "endToEndMs": h2d + comp + d2h})
        t += 2
    return recs


TRTEXEC_LOG = """&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --loadEngine=m.engine --exportTimes=t.json
[11/27/2026-10:00:00] [I] === Device Information ===
[11/27/2026-10:00:00] [I] Selected Device: Orin
[11/27/2026-10:00:00] [I] TensorRT version: 10.3.0
[11/27/2026-10:00:04] [I] === Performance summary ===
[11/27/2026-10:00:04] [I] Throughput: 812.4 qps
[11/27/2026-10:00:04] [I] Latency: min = 1.1 ms, max = 2.1 ms, mean = 1.6 ms, median = 1.6 ms, percentile(90%) = 2.1 ms, percentile(95%) = 2.1 ms, percentile(99%) = 2.1 ms
[11/27/2026-10:00:04] [I] Enqueue Time: min = 0.01 ms, max = 0.02 ms, mean = 0.01 ms, median = 0.01 ms, percentile(90%) = 0.02 ms, percentile(95%) = 0.02 ms, percentile(99%) = 0.02 ms
[11/27/2026-10:00:04] [I] H2D Latency: min = 0.05 ms, max = 0.05 ms, mean = 0.05 ms, median = 0.05 ms, percentile(90%) = 0.05 ms, percentile(95%) = 0.05 ms, percentile(99%) = 0.05 ms
[11/27/2026-10:00:04] [I] GPU Compute Time: min = 1 ms, max = 2 ms, mean = 1.5 ms, median = 1.5 ms, percentile(90%) = 2 ms, percentile(95%) = 2 ms, percentile(99%) = 2 ms
&&&& PASSED TensorRT.trtexec [TensorRT v100300]
"""


def test_trtexec_times_and_log_parse_into_a_bench_result():
    from benchmarks.harness import BenchResult
    from benchmarks.trtexec import latencies, parse_log, result_from_trtexec, trtexec_command

    recs = _trtexec_records(7, 100, warmup_ms=200.0)
    lat = latencies(recs, warmup_ms=200.0)
    assert len(lat) == 100 and min(lat) == pytest.approx(1.1) and max(lat) == pytest.approx(2.1)
    s = parse_log(TRTEXEC_LOG)
    assert s["latency"] == {"min": 1.1, "max": 2.1, "mean": 1.6, "median": 1.6, "p90": 2.1, "p95": 2.1, "p99": 2.1}
    assert s["gpu_compute_time"]["p90"] == 2.0 and s["throughput_qps"] == 812.4
    assert s["tensorrt_version"] == "10.3.0" and s["gpu"] == "Orin"
    r = result_from_trtexec(recs, TRTEXEC_LOG, artifact="m.engine", warmup_ms=200.0, device="jetson-orin-nano",
                            host="nvidia@orin")
    assert isinstance(r, BenchResult) and r.tool == "trtexec" and r.latency_ms.count == 100
    assert r.latency_ms.p50 == pytest.approx(1.6) and r.latency_ms.p90 == pytest.approx(2.1)
    assert r.runtime_latency_ms.p50 == pytest.approx(1.5)  # GPU compute only
    assert r.throughput == 812.4 and r.env["tensorrt_version"] == "10.3.0"
    assert BenchResult.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()
    cmd = trtexec_command("trtexec", "/tmp/m.engine", "/tmp/t.json", warmup_ms=200, duration_s=3, iterations=100)
    assert "--loadEngine=/tmp/m.engine" in cmd and "--exportTimes=/tmp/t.json" in cmd and "--iterations=100" in cmd


def test_trtexec_bad_times_are_clear_errors():
    from benchmarks.trtexec import latencies
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="non-empty JSON list"):
        latencies({"latencyMs": 1})
    with pytest.raises(ConfigError, match="no 'latencyMs'"):
        latencies([{"computeMs": 1}])
    with pytest.raises(ConfigError, match="warm-up"):
        latencies(_trtexec_records(5, 0, 200.0), warmup_ms=200.0)


# --------------------------------------------------------------------------- store and report
def _fake_result(artifact: str, p: float, acc: float | None, device: str = "x86-cpu"):
    """Results built from known samples (the store/report logic, not the timing, is under test here)."""
    from benchmarks.harness import BenchResult
    from benchmarks.stats import LatencyStats

    return BenchResult(artifact=artifact, format="onnx", runtime="onnxruntime", precision="fp32", batch=1, threads=2,
                       latency_ms=LatencyStats.from_samples([p, p * 1.1, p * 1.2, p * 1.5]), throughput=1000 / p,
                       device=device, accuracy=acc, env={"cpu": "test cpu", "versions": {"onnxruntime": "1"}})


def test_store_appends_queries_and_exports(tmp_path, monkeypatch):
    import csv

    from benchmarks.store import ResultsStore, default_db_path

    monkeypatch.setenv("EDGETL_RESULTS_DB", str(tmp_path / "env.db"))
    assert default_db_path() == tmp_path / "env.db"
    store = ResultsStore(tmp_path / "r.db")
    a = store.add(_fake_result("a.onnx", 2.0, 0.9), run_id="run1")
    store.add(_fake_result("a.onnx", 3.0, 0.9), run_id="run2")
    store.add(_fake_result("b.onnx", 1.0, None, device="raspberry-pi-5"), run_id="run2")
    assert a == 1 and len(store) == 3
    assert len(store.query(latest=True)) == 2
    assert store.query(latest=True)[0][2].latency_ms.p50 == pytest.approx(3.45)  # the newest a.onnx: [3, 3.3, 3.6, 4.5]
    assert [r.artifact for r in store.results(device="raspberry-pi-5")] == ["b.onnx"]
    assert len(store.results(run_id="run2")) == 2
    rows = json.loads(store.export_json(tmp_path / "out.json").read_text())
    assert len(rows) == 3 and rows[0]["latency_ms"]["count"] == 4 and rows[0]["run_id"] == "run1"
    with open(store.export_csv(tmp_path / "out.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[2]["p50_ms"]) == pytest.approx(1.15) and table[2]["accuracy"] == ""


def test_pareto_front_on_known_points():
    from benchmarks.report import pareto_front

    pts = [(1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (4.0, 90.0), (0.5, 70.0), (5.0, 90.0)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_report_writes_markdown_and_html_with_embedded_plots(tmp_path):
    import base64

    from benchmarks.report import write_report

    results = [_fake_result("fp32.onnx", 5.0, 0.96), _fake_result("int8.xml", 2.0, 0.95),
               _fake_result("pi.onnx", 40.0, 0.96, device="raspberry-pi-5"), _fake_result("noacc.onnx", 3.0, None)]
    files = write_report(results, tmp_path / "rep")
    html = Path(files["html"]).read_text()
    assert html.count("data:image/png;base64,") == 2 and files["pareto"] is True
    b64 = html.split("data:image/png;base64,")[2].split('"')[0]
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = Path(files["markdown"]).read_text()
    assert "| x86-cpu | local | int8.xml |" in md and "**2.820**" in md  # p90 of [2, 2.2, 2.4, 3]: 2.4 + 0.7 * 0.6
    assert Path(files["latency_png"]).stat().st_size > 5000
    files = write_report([_fake_result("a.onnx", 1.0, None)], tmp_path / "noacc")
    assert files["pareto"] is False and "pareto_png" not in files


# --------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_bench_prints_table_and_stores(exports, tmp_path):
    db = tmp_path / "cli.db"
    r = run_cli_here("bench", str(exports["onnx"]), str(exports["openvino"]), "--device", "x86-cpu", "--db", str(db),
                     *QUICK_CLI)
    assert r.returncode == 0, r.stderr
    assert "p90" in r.stderr and "lite0_digits.onnx" in r.stderr and "lite0_digits.xml" in r.stderr
    r = run_cli_here("report", "--db", str(db), "-o", str(tmp_path / "rep"), "--csv", str(tmp_path / "r.csv"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["results"] == 2 and out["pareto"] is True and Path(out["html"]).exists()
    assert Path(out["csv"]).read_text().count("\n") == 3


def test_cli_bench_bad_input_is_one_line(tmp_path, exports):
    r = run_cli_here("bench", str(tmp_path / "missing.onnx"), "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli_here("bench", str(exports["onnx"]), "--device", "jetson-orin-nan", "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "did you mean 'jetson-orin-nano'" in r.stderr
    r = run_cli_here("bench", str(exports["openvino"]), "--device", "android-arm64", "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "does not run openvino" in r.stderr
    r = run_cli_here("devices", "--json")
    assert r.returncode == 0 and {"x86-cpu", "jetson-agx-orin"} <= {p["name"] for p in json.loads(r.stdout)["profiles"]}
    r = run_cli_here("report", "--db", str(tmp_path / "nothing.db"))
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.slow
def test_executorch_runner_through_the_exporters_api(lite0_digits, tmp_path):
    """ExecuTorch (XNNPACK) program made by the exporters package, measured by the harness like the others."""
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.profiles import load_profile
    from exporters import ExportOptions, export

    (pte,) = export(lite0_digits, "executorch", tmp_path / "et", options=ExportOptions(parity=False))
    r = measure(pte, BenchConfig(**QUICK), profile=load_profile("x86-cpu"))
    _sane(r.latency_ms)
    assert r.format == "executorch" and r.runtime == "executorch" and r.runner["outputs_finite"] is True
    assert r.inputs.startswith("data:digits/test") and r.model_size_bytes > 1_000_000
