"""Which latency figure ranks the recommendation: the median call on an idle machine; on a contended run, the
store's clean record of the same bytes, else the lower tail of the calls, and "unsettled" when that does not settle
it. Rows and store records are constructed: this is the rule, not a timing."""

from __future__ import annotations

import dataclasses
import platform
from types import SimpleNamespace

from benchmarks.harness import BenchResult
from benchmarks.stats import LatencyStats

HOST = platform.node()


def _result(name: str, fmt: str, samples: list[float], acc: float, *, contended: bool = False,
            round_mins: list[float] | None = None, sha: str | None = None, session: str = "now-000000",
            device: str = "x86-cpu") -> BenchResult:
    rounds = [{"round": i, "p50_ms": sorted(samples)[len(samples) // 2], "min_ms": m, "p5_ms": m,
               "contended": contended} for i, m in enumerate(round_mins or [min(samples)] * 5)]
    return BenchResult(artifact=name, format=fmt, runtime={"torch": "torch", "executorch": "executorch"}.get(fmt, "ort"),
                       precision="fp32", batch=1, threads=2, path=f"/run/stages/03-e/{name}" if fmt != "torch" else None,
                       latency_ms=LatencyStats.from_samples(samples), throughput=1.0, device=device, accuracy=acc,
                       accuracy_source="digits test split (270 images)", contended=contended, rounds=rounds,
                       artifact_meta={"sha256": sha or f"sha-of-{name}"}, env={"hostname": HOST},
                       config={"max_spread": 0.25, "interleaved_run": session})


def _recommend(rows: list[tuple[str, BenchResult]], store=None) -> dict:
    from edgetl.run_bench import attach_clean_records
    from edgetl.run_report import build_run_report, render

    run_dir = "/run"
    items = [{"role": role, "device": "x86-cpu", "agreement": 1.0, "cost": None, "result": r.to_dict()}
             for role, r in rows]
    if store is not None:
        attach_clean_records(items, store)
    recipe = SimpleNamespace(budgets=SimpleNamespace(max_accuracy_drop=None, target_latency_ms=None),
                             to_dict=lambda: {"name": "t", "stages": []}, fingerprint=lambda: "abc", model="t.pt",
                             data="digits")
    bench = SimpleNamespace(kind="bench", key="k", cached=False, seconds=1.0, directory=f"{run_dir}/stages/04-b",
                            summary={"results": items})
    ctx = SimpleNamespace(recipe=recipe, run_dir=run_dir, data=SimpleNamespace(name="digits"))
    rep = build_run_report(ctx, [bench], search=[], chosen_ratio=None, budget_met=None)
    rec = rep.recommendation()
    rec["_md"] = render(rep, "md", plot=False)
    return rec


TEACHER = ("teacher", _result("teacher", "torch", [14.0] * 100, 0.9867))
# The demo's case: quiet, ExecuTorch is faster by the median; beside two busy processes ONNX Runtime is.
QUIET = {"pte": [0.96] * 90 + [1.06] * 10, "onnx": [1.16] * 90 + [1.28] * 10}
LOADED = {"pte": [1.257] * 80 + [2.9] * 20, "onnx": [1.117] * 80 + [5.2] * 20}


def _pair(times: dict, *, contended: bool, mins: dict | None = None, session: str = "s-loaded", **kw):
    mins = mins or {}
    return [TEACHER,
            ("export:onnx", _result("m.onnx", "onnx", times["onnx"], 0.984, contended=contended,
                                    round_mins=mins.get("onnx"), session=session, **kw)),
            ("export:executorch", _result("m.pte", "executorch", times["pte"], 0.984, contended=contended,
                                          round_mins=mins.get("pte"), session=session, **kw))]


def _store_quiet(tmp_path, **kw):
    from benchmarks.store import ResultsStore

    store = ResultsStore(tmp_path / "r.db")
    for _role, r in _pair(QUIET, contended=False, session="20261201T2300Z-quiet", **kw):
        store.add(r, run_id="run:demo")
    return store


def test_lower_median_wins_over_a_lower_p90():
    # ExecuTorch: faster median call, a long tail (preempted threads); ONNX Runtime: slower median, tight tail
    pte = [0.94] * 80 + [2.5] * 20
    onnx = [0.97] * 90 + [1.09] * 10
    rec = _recommend([TEACHER, ("export:onnx", _result("m.onnx", "onnx", onnx, 0.984)),
                      ("export:executorch", _result("m.pte", "executorch", pte, 0.984))])
    assert rec["role"] == "export:executorch", rec["line"]
    assert "median latency 0.940 ms" in rec["line"] and "p90 2.500 ms" in rec["line"]
    assert rec["ranked_by"] == "p50" and rec["settled"] is True and rec["reliable"] is True
    assert "the recommendation is ranked by p50, p90 the headline" in rec["_md"]


def test_a_contended_run_ranks_by_the_clean_record_of_the_same_bytes(tmp_path):
    store = _store_quiet(tmp_path)
    rec = _recommend(_pair(LOADED, contended=True), store)
    assert rec["role"] == "export:executorch", rec["line"]  # the quiet order, not this run's medians
    assert rec["ranked_by"] == "clean-record:20261201T2300Z-quiet"
    assert rec["clean_record"]["run_id"] == "run:demo" and len(rec["clean_record"]["store_ids"]) == 2
    assert rec["reliable"] is False and rec["settled"] is True
    line = rec["line"]
    assert "ranked by the uncontended measurement of the same files in run run:demo at " in line
    assert "median latency 0.960 ms there" in line and "this run's timings were contended (median 1.257 ms)" in line
    assert "ranked by the uncontended p50 of the same files in run run:demo" in rec["_md"]


def test_a_record_of_other_bytes_another_host_or_device_is_ignored(tmp_path):
    from benchmarks.store import ResultsStore

    loaded = _pair(LOADED, contended=True)
    # same paths, rebuilt files (other content); right content from another host, another machine, another
    # device; and right content measured contended
    others = [dict(sha="rebuilt"), dict(host="user@board"), dict(hostname="another-box"),
              dict(device="raspberry-pi-5"), dict(contended=True)]
    for k, other in enumerate(others):
        store = ResultsStore(tmp_path / f"r{k}.db")
        for _role, r in _pair(QUIET, contended=other.get("contended", False), session=f"quiet-{k}",
                              device=other.get("device", "x86-cpu")):
            r = dataclasses.replace(r, host=other.get("host", r.host),
                                    env={"hostname": other.get("hostname", HOST)})
            if "sha" in other:
                r.artifact_meta = {"sha256": f"{other['sha']}-{r.artifact}"}
            store.add(r, run_id="run:demo")
        rec = _recommend(loaded, store)
        assert not rec["ranked_by"].startswith("clean-record"), (other, rec["line"])
    # a clean record of only one of the two eligible files does not rank them
    store = ResultsStore(tmp_path / "half.db")
    store.add(_pair(QUIET, contended=False, session="half")[2][1], run_id="run:half")
    assert not _recommend(loaded, store)["ranked_by"].startswith("clean-record")


def test_no_record_ranks_by_the_lower_tail_and_says_so(tmp_path):
    from benchmarks.store import ResultsStore

    # both figures agree (ExecuTorch first) and ONNX Runtime's fastest call is slower in every round
    times = {"pte": [1.0] * 80 + [2.9] * 20, "onnx": [1.1] * 80 + [5.2] * 20}
    mins = {"pte": [0.90, 0.91, 0.92, 0.90, 0.93], "onnx": [1.05, 1.06, 1.04, 1.07, 1.05]}
    rec = _recommend(_pair(times, contended=True, mins=mins), ResultsStore(tmp_path / "empty.db"))
    assert rec["role"] == "export:executorch" and rec["ranked_by"] == "min-per-call" and rec["settled"] is True
    assert rec["ranking_ms"] == {"stages/03-e/m.pte": 0.91, "stages/03-e/m.onnx": 1.05}
    line = rec["line"]
    assert line.startswith("ship ") and "by the lower tail of its calls (0.910 ms" in line
    assert "the store holds no clean measurement of the same files" in line and rec["reliable"] is False


def test_tail_and_median_disagreeing_is_unsettled(tmp_path):
    from benchmarks.store import ResultsStore

    # the loaded demo: ONNX Runtime's median is lower, ExecuTorch's fastest calls are
    mins = {"pte": [0.93, 0.95, 0.94, 0.96, 0.94], "onnx": [1.02, 1.03, 1.01, 1.04, 1.02]}
    # an OpenVINO IR far slower in every round is not within the noise, however much its own rounds disagree
    xml = _result("m.xml", "openvino", [3.9] * 100, 0.984, contended=True, round_mins=[1.6, 3.0, 1.5, 1.7, 2.9],
                  session="s-loaded")
    rec = _recommend([*_pair(LOADED, contended=True, mins=mins), ("export:openvino", xml)],
                     ResultsStore(tmp_path / "empty.db"))
    assert rec["settled"] is False and rec["reliable"] is False and rec["ranked_by"] == "min-per-call"
    assert rec["candidates"] == ["stages/03-e/m.pte", "stages/03-e/m.onnx"] and "m.xml" not in rec["line"]
    line = rec["line"]
    assert line.startswith("UNSETTLED: this run's timings were contended") and not line.startswith("ship")
    assert "stages/03-e/m.pte (0.940 ms by fastest call, median 1.257 ms)" in line
    assert "stages/03-e/m.onnx (1.020 ms by fastest call, median 1.117 ms)" in line
    assert "the median call ranks m.onnx first" in rec["unsettled_because"]
    assert "which does not settle the choice" in rec["_md"]
    # rounds that swap the two are unsettled even when the median agrees with the tail
    swap = {"pte": [0.90, 1.10, 0.90, 0.90, 0.91], "onnx": [1.00, 0.95, 1.00, 1.01, 1.02]}
    times = {"pte": [1.0] * 100, "onnx": [1.1] * 100}
    rec = _recommend(_pair(times, contended=True, mins=swap), ResultsStore(tmp_path / "empty.db"))
    assert rec["settled"] is False and "m.onnx was as fast in 1 of 5 rounds" in rec["unsettled_because"]
