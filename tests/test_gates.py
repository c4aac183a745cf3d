"""Quality gates: an output past its budget stops with the numbers (or ships, flagged, with --allow-drop)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgetl import gates
from edgetl.errors import BudgetError, ConfigError, UnknownNameError


def test_default_budgets_and_overrides():
    assert gates.budget_for("quantize") == 1.0 and gates.budget_for("prune") == 2.0
    assert gates.budget_for("quantize", budgets={"quantize": 0.5}) == 0.5
    assert gates.budget_for("quantize", 3.0, budgets={"quantize": 0.5}) == 3.0  # the CLI flag wins
    with pytest.raises(UnknownNameError, match="did you mean 'quantize'"):
        gates.budget_for("quantise")
    with pytest.raises(ConfigError, match="between 0 and 100"):
        gates.budget_for("quantize", -1)


def test_a_verdict_carries_the_numbers_and_the_fixes():
    v = gates.check("quantize", before=0.92, after=0.61, agreement=0.64, split="val", samples=270)
    assert not v.passed and not v.allowed and v.drop_points == pytest.approx(31.0) and v.budget_points == 1.0
    line = v.line()
    for needle in ("31.00 points", "92.00 % -> 61.00 %", "val split, 270 images", "agreement 64.0 %", "--max-drop",
                   "--calibration", "--allow-drop"):
        assert needle in line
    with pytest.raises(BudgetError) as e:
        gates.enforce(v)
    assert e.value.verdict is v and str(e.value) == line
    ok = gates.check("quantize", before=0.92, after=0.915)
    assert ok.passed and gates.enforce(ok) is ok and "within budget" in ok.line()
    allowed = gates.check("quantize", before=0.92, after=0.61, allow_drop=True)
    assert not allowed.passed and allowed.allowed and "shipped anyway" in allowed.line()
    assert gates.enforce(allowed) is allowed
    assert gates.check_series([ok, allowed]) == [allowed.line()]
    with pytest.raises(ConfigError, match="accuracy between 0 and 1"):
        gates.check("quantize", before=92.0, after=0.6)


def test_collapse_names_the_ratio_that_stayed_above_the_floor():
    c = gates.collapse([(0.3, 0.85), (0.5, 0.62), (0.9, 0.11)], before=0.92, num_classes=10)
    assert c.collapsed and c.chance == pytest.approx(0.1) and c.floor == pytest.approx(0.1 + 0.25 * 0.82)
    assert c.highest_safe_ratio == 0.5 and "ratio 0.5 stayed above it" in c.line() and "--ratio" in c.line()
    fine = gates.collapse([(0.3, 0.85)], before=0.92, num_classes=10)
    assert not fine.collapsed and fine.highest_safe_ratio == 0.3


@pytest.mark.slow
def test_a_real_collapsed_pruning_is_caught(lite0_digits, digits):
    """Taylor pruning of 95 % of the channels without recovery takes the digits teacher to near chance; 10 % keeps
    it well above the floor (measured 88 % against 91 % unpruned)."""
    from edgetl.prune import PruneConfig, prune

    points = []
    before = None
    for ratio in (0.1, 0.95):
        p = prune(lite0_digits, PruneConfig(criterion="taylor", ratio=ratio, max_layer_ratio=0.97, round_to=1),
                  data=digits)
        m = p.history[-1].metrics
        before = m["val_accuracy_before"]
        points += gates.prune_points(m)
    c = gates.collapse(points, before=before, num_classes=digits.num_classes)
    assert c.collapsed, points
    assert c.worst[0] == 0.95 and c.highest_safe_ratio == 0.1
    v = gates.check("prune", before=before, after=c.worst[1])
    assert not v.passed and "--recover-epochs" in v.line()


def _destroyed_calibration(real):
    """Calibration images turned to a constant grey: every activation range is that of one flat image, so
    real inputs saturate the int8 ranges (a deliberately broken quantization)."""
    def select(data, *, samples, seed):
        calib = real(data, samples=samples, seed=seed)
        return dataclasses.replace(calib, images=calib.images * 0 + 128)

    return select


@pytest.mark.slow
def test_quantize_past_its_budget_stops_with_the_numbers(lite0_digits_path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgetl.quantize.quantizer as qz
    from edgetl.cli import app

    monkeypatch.setattr(qz, "select_calibration", _destroyed_calibration(qz.select_calibration))
    out = tmp_path / "broken.onnx"
    args = ["quantize", str(lite0_digits_path), "--data", "digits", "--backend", "onnxruntime", "--calibration",
            "minmax", "--calib-samples", "30", "--max-float-layers", "0", "-o", str(out), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    v = res["verdict"]
    assert res["ok"] is False and res["error_type"] == "BudgetError"
    assert v["stage"] == "quantize" and v["budget_points"] == 1.0 and v["passed"] is False
    assert v["drop_points"] > 1.0 and v["before"] > v["after"] and "best reached keeps 0 layer(s)" in v["note"]
    assert f"{v['drop_points']:.2f} points" in res["error"] and "--allow-drop" in res["error"]
    assert not out.exists() and not list(tmp_path.glob(".*"))  # nothing shipped, no scratch left
    r = CliRunner().invoke(app, [*args, "--allow-drop"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.exists() and res["gate"]["passed"] is False and res["gate"]["allowed"] is True
    assert res["gate"]["drop_points"] == pytest.approx(res["drop_points"])
