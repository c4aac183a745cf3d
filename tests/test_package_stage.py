"""The recipe's ``package`` stage: one registry row, validated before any work, run after the report."""

from __future__ import annotations

import pytest

from edgetl.errors import ConfigError, UnknownNameError


def test_recipe_package_stage_validates_devices_and_order():
    from edgetl.package.stage import PackageConfig
    from edgetl.recipe import parse_recipe, validate

    base = {"name": "p", "data": "digits"}
    r = validate(parse_recipe({**base, "stages": [{"bench": {"devices": ["x86-cpu"]}},
                                                  {"package": {"devices": ["x86-cpu", "jetson-orin-nano"]}}]}))
    assert r.stage("package").config == PackageConfig(devices=("x86-cpu", "jetson-orin-nano"))
    with pytest.raises(UnknownNameError, match="x86-cpu"):  # an unknown profile suggests the nearest
        validate(parse_recipe({**base, "stages": [{"package": {"devices": ["x86-cpuu"]}}]}))
    with pytest.raises(ConfigError, match="cannot come after"):
        validate(parse_recipe({**base, "stages": [{"package": {}}, {"bench": {}}]}))
    with pytest.raises(ConfigError, match="at least one device"):
        PackageConfig(devices=())


def test_pipeline_skips_package_when_nothing_is_recommended(tmp_path):
    """No recommendation (no artifact met the budget): the package step writes no bundle rather than guess."""
    from types import SimpleNamespace

    from edgetl.package.stage import PackageConfig
    from edgetl.pipeline import _package

    stage = SimpleNamespace(config=PackageConfig(devices=("x86-cpu",)))
    ctx = SimpleNamespace(recipe=SimpleNamespace(stage=lambda kind: stage if kind == "package" else None),
                          run_dir=tmp_path)
    report: dict = {"recommendation": None}
    _package(ctx, report)
    assert "bundles" not in report and not list(tmp_path.iterdir())
