"""The recommendation ranks by the median call: a contended tail (p90) does not pick the file to ship."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.harness import BenchResult
from benchmarks.stats import LatencyStats


def _result(name: str, fmt: str, samples: list[float], acc: float) -> dict:
    return BenchResult(artifact=name, format=fmt, runtime={"torch": "torch", "executorch": "executorch"}.get(fmt, "ort"),
                       precision="fp32", batch=1, threads=2, path=f"/run/stages/03-e/{name}" if fmt != "torch" else None,
                       latency_ms=LatencyStats.from_samples(samples), throughput=1.0, device="x86-cpu", accuracy=acc,
                       accuracy_source="digits test split (270 images)").to_dict()


def test_lower_median_wins_over_a_lower_p90(tmp_path):
    from edgetl.run_report import build_run_report

    # ExecuTorch: faster median call, a long tail (preempted threads); ONNX Runtime: slower median, tight tail
    pte = [0.94] * 80 + [2.5] * 20
    onnx = [0.97] * 90 + [1.09] * 10
    rows = [("teacher", _result("teacher", "torch", [14.0] * 100, 0.9867)),
            ("export:onnx", _result("m.onnx", "onnx", onnx, 0.984)),
            ("export:executorch", _result("m.pte", "executorch", pte, 0.984))]
    run_dir = tmp_path / "run"
    recipe = SimpleNamespace(budgets=SimpleNamespace(max_accuracy_drop=None, target_latency_ms=None),
                             to_dict=lambda: {"name": "t"}, fingerprint=lambda: "abc", model="t.pt", data="digits")
    bench = SimpleNamespace(kind="bench", key="k", cached=False, seconds=1.0, directory=run_dir / "stages" / "04-b",
                            summary={"results": [{"role": role, "device": "x86-cpu", "agreement": 1.0, "cost": None,
                                                  "result": r} for role, r in rows]})
    ctx = SimpleNamespace(recipe=recipe, run_dir=run_dir, data=SimpleNamespace(name="digits"))
    rep = build_run_report(ctx, [bench], search=[], chosen_ratio=None, budget_met=None)
    rec = rep.recommendation()
    assert rec["role"] == "export:executorch", rec["line"]
    assert "median latency 0.940 ms" in rec["line"] and "p90 2.500 ms" in rec["line"]
