"""Latency figures a reader can trust: interleaved rounds, contention marked, device labels that do not lie.

The contended test starts two CPU burners itself (bounded by ``timeout``, killed in ``finally``) and checks the
marking, never a timing value.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from bench_exports import export_onnx, export_openvino
from conftest import run_cli

QUICK_CLI = ["--min-time", "0.3", "--min-count", "10", "--warmup", "0.02", "--warmup-runs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A small CNN (edgetl_tinycnn at 3x16x16) as an edgetl checkpoint and as ONNX: fast to load and to time."""
    from edgetl.models import load_model, save_model

    d = tmp_path_factory.mktemp("tiny")
    art = load_model("edgetl_tinycnn", num_classes=10)
    art = dataclasses.replace(art, input_spec=dataclasses.replace(art.input_spec, shape=(3, 16, 16)))
    return {"pt": save_model(art, d / "tiny.pt"), "onnx": export_onnx(art, d / "onnx"),
            "xml": export_openvino(art, d / "ov")}


def _burners(n: int, seconds: int) -> list[subprocess.Popen]:
    """CPU-bound processes that stop on their own after ``seconds`` (one process each: killing it leaves no
    child behind, unlike `timeout yes`)."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]


def test_bench_beside_two_busy_processes_marks_every_row_contended(tiny, tmp_path):
    db = tmp_path / "r.db"
    burners = _burners(2, 90)
    try:
        r = run_cli("bench", str(tiny["pt"]), str(tiny["onnx"]), "--rounds", "3", "--db", str(db), "--json",
                    *QUICK_CLI, timeout=120)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    results = out["results"]
    assert [Path(x["path"]).name for x in results] == ["tiny.pt", "lite0_digits.onnx"]
    for res in results:
        assert res["contended"] is True
        assert any("contention" in w for w in res["warnings"])
        # Re-measured (bounded): more rounds than asked for, at most twice as many.
        assert 3 < len(res["rounds"]) <= 6 and res["contention"]["contended_rounds"] >= 4
        assert max(rd["others_cores"] for rd in res["rounds"]) > 0.25
        assert all(rd["wall_s"] > 0 and rd["cpu_s"] >= 0 for rd in res["rounds"])
        assert res["env"]["omp_wait_policy"]["omp_wait_policy"] in ("PASSIVE", "default")
    base, other = results
    assert base["speedup"] is None
    sp = other["speedup"]
    assert sp["baseline"] == "tiny.pt" and sp["reliable"] is False and "contention" in sp["unreliable_because"]
    assert sp["rounds"] == len(other["rounds"]) and len(sp["per_round"]) == sp["rounds"]
    # The store keeps the marking, the host and the arch.
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT host, arch, contended, emulated FROM results ORDER BY id").fetchall()
    assert rows == [("local", platform.machine(), 1, None)] * 2


def test_table_row_marks_contention_and_unreliable_speedups():
    from benchmarks.harness import BenchResult
    from benchmarks.stats import LatencyStats
    from edgetl.cli.bench_cmd import RESULT_COLUMNS, result_row

    r = BenchResult(artifact="a.onnx", format="onnx", runtime="onnxruntime", precision="fp32", batch=1, threads=1,
                    latency_ms=LatencyStats.from_samples([1.0, 2.0]), throughput=1.0, contended=True,
                    rounds=[{"round": 0}], speedup={"ratio": 0.0012, "reliable": False, "baseline": "b"})
    row = dict(zip(RESULT_COLUMNS, result_row(r), strict=True))
    assert row["artifact"] == "a.onnx (contended)" and row["vs base"] == "0.0012x (unreliable)"


def test_speedup_is_the_median_of_per_round_ratios_and_flags_disagreeing_rounds():
    from benchmarks.interleave import speedup

    steady = speedup([10.0, 10.2, 9.8, 10.0], [5.0, 5.0, 5.0, 5.0], max_spread=0.25)
    assert steady["ratio"] == pytest.approx(2.0) and steady["reliable"] is True
    noisy = speedup([10.0, 30.0, 10.0], [5.0, 5.0, 10.0], max_spread=0.25)
    assert noisy["ratio"] == pytest.approx(2.0) and noisy["reliable"] is False
    assert "disagree by 250 %" in noisy["unreliable_because"]
    assert speedup([2.0] * 3, [1.0] * 3, max_spread=0.25, contended=True)["reliable"] is False


def test_speedups_keep_significant_digits():
    from benchmarks.report import format_ratio

    assert format_ratio(0.0012) == "0.0012x" and format_ratio(443.1) == "443x" and format_ratio(1.234) == "1.23x"
    assert format_ratio(12345.0) == "12,345x" and format_ratio(None) == "-"


def test_contention_rule_reads_both_figures():
    from benchmarks.contention import BlockLoad, ContentionRule, between, snapshot

    rule = ContentionRule()
    assert not rule.contended(BlockLoad(wall_s=1.0, cpu_s=1.0, others_cores=0.1))
    assert rule.reasons(BlockLoad(wall_s=1.0, cpu_s=1.0, others_cores=1.5)) == ["other processes used 1.50 cores"]
    assert "on a CPU 40 %" in rule.reasons(BlockLoad(wall_s=1.0, cpu_s=0.4, others_cores=0.0))[0]
    a = snapshot()
    sum(i * i for i in range(200_000))  # this process's own work is not "other processes"
    load = between(a, snapshot())
    assert load.wall_s > 0 and load.cpu_s > 0 and (load.others_cores is None or load.others_cores >= 0)


def _profile_of_another_arch():
    """A built-in device profile that runs ONNX and whose arch is not this machine's (an aarch64 board on x86,
    x86-cpu on ARM), so the refusal is checked on every host. A CPU profile when there is one: then the arch is the
    only mismatch."""
    from benchmarks.profiles import Accelerator, list_profiles, local_arch
    from edgetl.artifact import Format

    other = [p for p in list_profiles().values()
             if p.arch != local_arch() and p.source == "built-in" and Format.ONNX in p.formats]
    assert other, "the built-in profiles should include one of another arch"
    return min(other, key=lambda p: (p.accelerator is not Accelerator.CPU, p.name))


def test_a_profile_of_another_machine_needs_host_or_emulate(tiny, tmp_path):
    from benchmarks.profiles import local_arch

    prof = _profile_of_another_arch()
    here = local_arch().replace("_", "-")
    r = run_cli("bench", str(tiny["onnx"]), "--device", prof.name, "--db", str(tmp_path / "x.db"), *QUICK_CLI)
    assert r.returncode == 2 and "--host" in r.stderr and prof.arch in r.stderr and "--emulate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.db").exists()  # refused before any work
    r = run_cli("bench", str(tiny["onnx"]), "--device", prof.name, "--emulate", "--rounds", "1",
                "--db", str(tmp_path / "x.db"), "--json", *QUICK_CLI)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)["results"][0]
    assert res["device"] == prof.name and res["emulated"] == f"emulated on {here}"
    assert res["arch"] == platform.machine() and res["host"] == "local"
    from benchmarks.store import ResultsStore

    (stored,) = ResultsStore(tmp_path / "x.db").results()
    assert stored.emulated == f"emulated on {here}" and stored.arch == platform.machine()


def test_check_local_knows_arch_and_accelerator(monkeypatch):
    from benchmarks import profiles
    from edgetl.errors import ConfigError

    monkeypatch.setattr(profiles, "local_arch", lambda: "x86_64")
    monkeypatch.setattr(profiles, "_has_cuda", lambda: False)
    assert profiles.check_local(profiles.load_profile("x86-cpu")) is None
    with pytest.raises(ConfigError, match="arch is aarch64.*--host"):
        profiles.check_local(profiles.load_profile("raspberry-pi-5"))
    cuda_x86 = dataclasses.replace(profiles.load_profile("x86-cpu"), accelerator=profiles.Accelerator.CUDA)
    with pytest.raises(ConfigError, match="CUDA GPU"):
        profiles.check_local(cuda_x86)
    assert profiles.check_local(cuda_x86, emulate=True) == "emulated on x86-64"


def test_an_older_results_database_gains_the_new_columns(tmp_path):
    from test_bench import _fake_result

    from benchmarks.store import _SCHEMA, ResultsStore

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:
        con.executescript(_SCHEMA)
    store = ResultsStore(db)
    r = dataclasses.replace(_fake_result("a.onnx", 1.0, None), emulated="emulated on x86-64", contended=True)
    store.add(r, run_id="x")
    (back,) = store.results()
    assert back.emulated == "emulated on x86-64" and back.contended is True and back.arch == platform.machine()


def _interleaved(tiny, rule):
    """A real interleaved bench of the tiny CNN (PyTorch, ONNX Runtime, OpenVINO), short, with the given rule."""
    from benchmarks.harness import BenchConfig
    from benchmarks.interleave import Candidate, InterleaveConfig, measure_interleaved
    from edgetl.models import load_model

    cfg = BenchConfig(threads=1, warmup_runs=1, warmup_s=0.01, min_time_s=0.06, min_count=15, max_time_s=1.0)
    cands = [Candidate(load_model(str(tiny[k])), source_path=tiny[k], label=role)
             for k, role in (("pt", "teacher"), ("onnx", "export:onnx"), ("xml", "export:openvino"))]
    il = InterleaveConfig(rounds=3, max_extra_rounds=0, rule=rule)
    return [dataclasses.replace(r, accuracy=0.9) for r in measure_interleaved(cands, cfg, interleave=il).results]


def _sha256(*files: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.suffix.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def test_a_contended_rerun_ranks_by_the_stored_clean_run_of_the_same_files(tiny, tmp_path):
    """Two real benches through the store: the first judged clean, the second judged contended (the rule is
    constructed so, whatever the machine's load): the second run's recommendation ranks by the first's record."""
    from benchmarks.contention import ContentionRule
    from benchmarks.store import ResultsStore, record_run
    from edgetl.run_bench import attach_clean_records
    from edgetl.run_choose import recommend
    from edgetl.run_report import ReportRow

    db = tmp_path / "r.db"
    first = _interleaved(tiny, ContentionRule(others_cores=1e9, min_cpu_share=0.0))
    assert not any(r.contended for r in first)
    record_run(first, run_id="run:first", db=db)
    second = _interleaved(tiny, ContentionRule(min_cpu_share=1e9))  # every block "preempted"
    assert all(r.contended for r in second)
    # what the results record: the bytes measured, the rounds they were measured in, each round's lower tail
    onnx, xml = tiny["onnx"], tiny["xml"]
    assert second[1].artifact_meta["sha256"] == first[1].artifact_meta["sha256"] == _sha256(onnx)
    assert second[2].artifact_meta["sha256"] == _sha256(xml, xml.with_suffix(".bin"))
    assert len({r.config["interleaved_run"] for r in first}) == 1
    assert first[0].config["interleaved_run"] != second[0].config["interleaved_run"]
    assert all(rd["min_ms"] <= rd["p5_ms"] <= rd["p50_ms"] for r in second for rd in r.rounds)

    items = attach_clean_records([{"role": r.artifact, "device": r.device, "result": r.to_dict()} for r in second],
                                 ResultsStore(db))
    rows = [ReportRow(role=i["role"], device=i["device"], result=i["result"], file=i["result"]["path"],
                      accuracy=0.9, accuracy_split="test") for i in items]
    rec = recommend(rows, 1.0, set())
    session = first[0].config["interleaved_run"]
    assert rec["ranked_by"] == f"clean-record:{session}" and rec["clean_record"]["run_id"] == "run:first"
    assert rec["clean_record"]["store_ids"] == [2, 3]  # the first run's ONNX and OpenVINO rows
    faster_then = min(first[1:], key=lambda r: (r.latency_ms.p50, r.latency_ms.p90))
    assert rec["file"] == faster_then.path and rec["reliable"] is False
    assert "ranked by the uncontended measurement of the same files in run run:first" in rec["line"]


def test_a_baseline_is_built_once_per_run_and_copied_into_each_bench_stage(tiny, tmp_path):
    """Re-measuring times the same bytes: the second bench stage copies the first build (no rebuild), so the
    store can match its sha256; a failed build leaves nothing behind."""
    from types import SimpleNamespace

    from benchmarks.identity import content_sha256
    from edgetl.models import load_model
    from edgetl.run_bench import baseline

    recipe = SimpleNamespace(model=str(tiny["pt"]), data="digits", seed=0, arch=None, arch_args=None,
                             contract_keys=dict)  # a classifier recipe: no contract keys
    ctx = SimpleNamespace(run_dir=tmp_path / "run", recipe=recipe)
    builds = []

    def build(d: Path):
        builds.append(d)
        return load_model(str(export_onnx(load_model(str(tiny["pt"])), d)))

    first = baseline(ctx, "teacher-fp32", build, tmp_path / "run" / "stages" / "04-bench-a")
    second = baseline(ctx, "teacher-fp32", build, tmp_path / "run" / "stages" / "04-bench-b")
    assert len(builds) == 1
    assert first.path.parent == tmp_path / "run" / "stages" / "04-bench-a" / "baseline-teacher-fp32"
    assert second.path.parent == tmp_path / "run" / "stages" / "04-bench-b" / "baseline-teacher-fp32"
    assert content_sha256(first.path) == content_sha256(second.path) is not None
    assert not (second.path.parent / "baseline.json").exists()

    def broken(d: Path):
        raise RuntimeError("quantizer crashed")

    with pytest.raises(RuntimeError):
        baseline(ctx, "teacher-int8", broken, tmp_path / "run" / "stages" / "04-bench-c")
    # only the fp32 build is there: no int8 entry, no temporary directory
    assert [p.name.startswith("teacher-fp32-") for p in (tmp_path / "run" / "baselines").iterdir()] == [True]
