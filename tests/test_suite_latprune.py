"""The latprune suite end to end (``--smoke``: a tiny CNN on digits, short timing; its figures are no claim).

It checks the shape of the results, not their values: every section has the teacher, FLOPs-targeted and
latency-targeted rows with measured int8 p50s (or a stated reason a target was not built), and the issue's two
checks carry a verdict. ``--smoke`` turns the quiet lock off (this test itself runs under the shared machine
lock, which an exclusive lock would wait for); the lock paths are pointed at private files all the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latprune")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGETL_BENCH_LOCK": str(tmp / "bench.lock"),
           "EDGETL_QUIET_FLAG": str(tmp / "quiet"), "EDGETL_LATENCY_CACHE": str(tmp / "cache")}
    r = subprocess.run([sys.executable, "-m", "benchmarks.suites.latprune", "--smoke", "--work", str(tmp / "work"),
                        "--out", str(tmp / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, json.loads((tmp / "out" / "latprune-smoke.json").read_text())


@pytest.mark.slow
def test_every_section_has_measured_rows(smoke):
    _, out = smoke
    assert out["smoke"] is True
    assert [s["key"] for s in out["sections"]] == ["s1", "s2", "s3"]
    assert all(s["measure"]["quiet"]["mode"] == "off" for s in out["sections"])  # smoke: the lock is off
    built_latency = 0
    for s in out["sections"]:
        kinds = [p["kind"] for p in s["points"]]
        assert kinds.count("teacher") == 1 and "flops" in kinds and "latency" in kinds, s["key"]
        measured = s["measure"]["points"]
        assert s["measure"]["points"][s["points"][0]["name"]]["speedup_vs_teacher_int8"] is None  # the baseline
        for p in s["points"]:
            if "missed" in p:  # a target out of reach is a row that says why, never a silent gap
                assert p["missed"].strip(), p
                continue
            m = measured[p["name"]]
            assert m["p50_ms"] > 0 and m["count"] > 0 and m["precision"] == "int8", p["name"]
            assert len(m["rounds"]) >= s["measure"]["config"]["rounds"]
            assert 0.0 <= p[s["metric"]] <= 1.0
            if p["kind"] != "teacher":
                assert m["speedup_vs_teacher_int8"]["ratio"] > 0
            if p["kind"] == "latency":
                built_latency += 1
                fit = p["latency_fit"]
                assert fit["met"] and fit["measured_p50_ms"] <= fit["target_ms"] + 1e-9
                assert fit["table_measured_points"] == 0  # the table was measured before, alone
        assert set(s["targets"]) >= {p["name"].removeprefix("lrp-") for p in s["points"] if p["kind"] == "flops"
                                     and "missed" not in p}
    assert built_latency >= 1


@pytest.mark.slow
def test_checks_have_verdicts(smoke):
    tmp, out = smoke
    for s in out["sections"]:
        checks = {c["check"]: c for c in s["checks"]}
        assert set(checks) == {"a", "b"}
        assert all(c["verdict"] in ("MET", "MISSED") for c in checks.values())
        assert checks["a"]["of"] == sum(p["kind"] == "flops" and "missed" not in p for p in s["points"])
        assert checks["b"]["need"] == (1.5 if s["key"] == "s3" or s["resolution"] > 64 else 2.0)
    md = (tmp / "out" / "latprune-smoke.md").read_text()
    assert md.count("**Check (a)") == 3 and md.count("**Check (b)") == 3 and "SMOKE" in md
    assert (tmp / "out" / "latprune-smoke.png").stat().st_size > 0


@pytest.mark.slow
def test_s3_scores_against_the_unpruned_model(smoke):
    _, out = smoke
    s3 = next(s for s in out["sections"] if s["key"] == "s3")
    assert s3["metric"] == "agreement"
    teacher = s3["points"][0]
    assert teacher["agreement_fp32"] == 1.0 and teacher["kl_fp32"] == pytest.approx(0.0, abs=1e-6)
    held, rec = set(s3["photos"]["held_out_photos"]), set(s3["photos"]["recovery_photos"])
    assert held and rec and not held & rec  # split by source photo


def test_quiet_machine_flags_locks_pauses_and_cleans_up(tmp_path):
    import fcntl
    import signal
    import time

    from benchmarks.quiet import quiet_machine

    flag, lock = tmp_path / "quiet", tmp_path / "bench.lock"
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    try:
        with quiet_machine(flag=flag, lock=lock, pause=[child.pid]) as q:
            assert flag.exists()
            time.sleep(0.2)
            state = Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0]
            assert state == "T"  # stopped while the machine is quiet
            fd = os.open(lock, os.O_RDWR)
            try:  # another holder cannot take the lock, even shared, while it is held
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            with quiet_machine(flag=flag, lock=lock) as inner:  # re-entrant: no wait on our own lock
                assert flag.exists() and inner.mode == "nested"
            assert flag.exists()
        assert q.paused == [child.pid] and q.mode == "held"
        assert not flag.exists()
        time.sleep(0.2)
        assert Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0] != "T"
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
        finally:
            os.close(fd)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_flag_left_by_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    from benchmarks.quiet import remove_stale_flag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    flag = tmp_path / "quiet"
    flag.write_text(f"{dead.pid}\n")
    assert remove_stale_flag(flag) and not flag.exists()
    flag.write_text(f"{os.getpid()}\n")
    assert not remove_stale_flag(flag) and flag.exists()
    flag.write_text("")  # written by a tool that records no pid (the shell wrapper): left alone
    assert not remove_stale_flag(flag) and flag.exists()
