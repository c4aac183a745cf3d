"""The stage registry and the one stage shape: a stage added by one row is validated by the recipe, run by the
pipeline and given CLI flags from its config; prune keeps its recovery's records; configs own their keys."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from edgetl.artifact import Artifact, StageRecord
from edgetl.errors import ConfigError, UnknownNameError
from edgetl.stages import STAGES, StageContext, StageKind, kind_of, option, register, run_stage


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """A stage config as a plug-in would write one: typed fields, each with its help."""

    std: float = option(0.01, help="Standard deviation of the noise added to every weight.")
    seed: int = option(0, help="Seed of the noise.")
    layers: tuple[str, ...] = option((), help="Parameter name prefixes to touch (default: all).")
    skip_bias: bool = option(True, help="Leave biases as they are.")

    def __post_init__(self) -> None:
        if not self.std >= 0:
            raise ConfigError(f"std must be >= 0, got {self.std}")


def add_noise(artifact: Artifact, config: NoiseConfig, *, data=None, ctx: StageContext | None = None) -> Artifact:
    """Seeded Gaussian noise on the weights of a copy of the model."""
    import copy

    model = copy.deepcopy(artifact.model)
    g = torch.Generator().manual_seed(config.seed)
    touched = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (config.skip_bias and name.endswith("bias")) or (config.layers and not name.startswith(config.layers)):
                continue
            p.add_(torch.randn(p.shape, generator=g) * config.std)
            touched += p.numel()
    return artifact.with_stage(StageRecord("noise", dataclasses.asdict(config), {"touched": touched}), model=model)


_REF = f"{NoiseConfig.__module__}:"


@pytest.fixture
def noise_stage():
    """The one row that adds the stage; removed again after the test."""
    kind = register(StageKind("noise", _REF + "NoiseConfig", _REF + "add_noise", 0, "seeded weight noise"))
    yield kind
    STAGES.pop("noise", None)


def _diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].shape == sb[k].shape)


# --------------------------------------------------------------------------- registry
def test_stage_function_is_found_by_its_config_class(noise_stage, lite0_digits):
    from edgetl.prune import PruneConfig

    assert kind_of(NoiseConfig()).name == "noise" and kind_of(PruneConfig()).name == "prune"
    out = run_stage(lite0_digits, NoiseConfig(std=0.05), ctx=StageContext())
    assert out.history[-1].stage == "noise" and out.history[-1].metrics["touched"] > 0
    assert 0 < _diff(out.model, lite0_digits.model) < 1.0  # noise of std 0.05 moved the weights, not the input
    with pytest.raises(ConfigError, match="no stage config"):
        kind_of(object())


def test_recipe_validates_a_stage_added_by_one_row(noise_stage):
    from edgetl.recipe import parse_recipe, validate

    base = {"name": "n", "data": "digits"}
    r = validate(parse_recipe({**base, "stages": [{"noise": {"std": 0.1}}, {"quantize": {}}]}))
    assert r.stage("noise").config == NoiseConfig(std=0.1, seed=0)  # built once, in validation
    with pytest.raises(UnknownNameError, match="did you mean 'std'"):
        validate(parse_recipe({**base, "stages": [{"noise": {"sdt": 0.1}}]}))
    with pytest.raises(ConfigError, match="std must be >= 0"):
        validate(parse_recipe({**base, "stages": [{"noise": {"std": -1}}]}))
    with pytest.raises(ConfigError, match="cannot come after"):
        validate(parse_recipe({**base, "stages": [{"quantize": {}}, {"noise": {}}]}))
    with pytest.raises(UnknownNameError, match="did you mean 'noise'"):
        parse_recipe({**base, "stages": [{"nosie": {}}]})


def test_recipe_seed_is_the_default_of_every_config_with_a_seed(noise_stage):
    from edgetl.recipe import parse_recipe, validate

    r = validate(parse_recipe({"name": "s", "seed": 7, "stages": [{"noise": {}}, {"prune": {"criterion": "l1"}},
                                                                 {"quantize": {"seed": 3}}]}))
    assert r.stage("noise").config.seed == 7 and r.stage("prune").config.seed == 7
    assert r.stage("quantize").config.seed == 3  # an explicit value stays


def test_quantize_backend_default_is_the_configs_own():
    from edgetl.quantize import QuantizeConfig
    from edgetl.recipe import parse_recipe, validate

    r = validate(parse_recipe({"name": "q", "stages": [{"quantize": {}}]}))
    assert r.stage("quantize").config.backend == QuantizeConfig().backend


def test_pipeline_runs_a_stage_added_by_one_row(noise_stage, lite0_digits_path, tmp_path):
    from edgetl.models import load_model
    from edgetl.pipeline import run_recipe
    from edgetl.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "noisy", "data": "digits", "stages": [
        {"noise": {"std": 0.02, "seed": 1}}, {"prune": {"criterion": "l1", "ratio": 0.2}}]}))
    recipe = load_recipe(p, model=str(lite0_digits_path))
    result = run_recipe(recipe, tmp_path / "run")
    noise, pruned = result.stages
    assert noise.kind == "noise" and not noise.cached and noise.summary["touched"] > 0
    saved = load_model(noise.directory / "model.pt")  # a PyTorch result is saved in the stage directory
    source = load_model(lite0_digits_path)
    assert 0 < _diff(saved.model, source.model) < 1.0
    stages = [r.stage for r in load_model(pruned.directory / "model.pt").history]
    assert stages[-2:] == ["noise", "prune"]  # prune ran on the noise stage's output
    again = run_recipe(recipe, tmp_path / "run")
    assert all(o.cached for o in again.stages)


# --------------------------------------------------------------------------- configs own their keys
def test_stage_configs_own_the_pipeline_keys():
    from benchmarks.stage import BenchStageConfig
    from edgetl.distill import DistillConfig
    from edgetl.prune import PruneConfig, Recovery
    from exporters.stage import ExportConfig

    assert PruneConfig(recover="Distill").recover is Recovery.DISTILL
    with pytest.raises(UnknownNameError, match="did you mean 'distill'"):
        PruneConfig(recover="distil")
    assert DistillConfig(student="edgetl_tinycnn").student == "edgetl_tinycnn"
    e = ExportConfig.from_options({"formats": "onnx, openvino", "dynamic_batch": True})
    assert e.formats == ("onnx", "openvino") and e.options.dynamic_batch is True
    with pytest.raises(UnknownNameError, match="did you mean 'onnx'"):
        ExportConfig(formats=("onxx",))
    b = BenchStageConfig.from_options({"devices": ["x86-cpu"], "threads": 2})
    assert b.devices == ("x86-cpu",) and b.bench.threads == 2
    assert "formats" in ExportConfig.option_names() and "devices" in BenchStageConfig.option_names()


def test_distill_needs_teachers_or_a_student(lite0_digits, digits):
    from edgetl.distill import DistillConfig, distill

    with pytest.raises(ConfigError, match="needs teachers"):
        distill(lite0_digits, DistillConfig(epochs=1), data=digits)
    with pytest.raises(ConfigError, match="pass data="):
        distill(lite0_digits, DistillConfig(student="edgetl_tinycnn"))


# --------------------------------------------------------------------------- prune keeps the recovery record
def _tiny(digits, lite0_digits) -> Artifact:
    from edgetl.models import build_arch

    return Artifact(format="torch", model=build_arch("edgetl_tinycnn", num_classes=10), arch="edgetl_tinycnn",
                    input_spec=lite0_digits.input_spec, labels=tuple(str(c) for c in digits.classes))


def test_prune_keeps_each_steps_recovery_record(digits, lite0_digits):
    from edgetl.prune import PruneConfig, prune

    def recover(art, data):
        return art.with_stage(StageRecord("test-recover", {}, {"params": sum(p.numel() for p in art.model.parameters())}))

    art = _tiny(digits, lite0_digits)
    out = prune(art, PruneConfig(criterion="l1", ratio=0.4, steps=2, round_to=None), data=digits, recover=recover)
    stages = [r.stage for r in out.history]
    assert stages == ["prune-step", "test-recover", "prune-step", "test-recover", "prune"]
    sizes = [r.metrics["params"] for r in out.history if r.stage == "test-recover"]
    assert sizes[0] > sizes[1] == out.history[-1].metrics["params_after"]  # each record saw its step's model
    with pytest.raises(ConfigError, match="not both"):
        prune(art, PruneConfig(criterion="l1", recover="finetune", recover_epochs=1), data=digits, recover=recover)


def test_prune_recovers_by_distillation_from_the_context_teacher(digits, lite0_digits):
    from edgetl.data import ImageSet
    from edgetl.prune import PruneConfig, prune

    def cut(s: ImageSet, n: int) -> ImageSet:
        return ImageSet(s.images[:n], s.labels[:n])

    small = dataclasses.replace(digits, train=cut(digits.train, 128), val=cut(digits.val, 64),
                                test=cut(digits.test, 64))
    art = _tiny(digits, lite0_digits)
    cfg = PruneConfig(criterion="l1", ratio=0.3, recover="distill", recover_epochs=1, round_to=None)
    out = prune(art, cfg, data=small, ctx=StageContext(teachers=(lite0_digits,)))
    rec = next(r for r in out.history if r.stage == "distill")
    assert rec.options["teachers"] == [lite0_digits.name] and rec.options["epochs"] == 1
    assert rec.metrics["teacher_test_accuracy"] > 0.5  # the real teacher, not the random student itself
    assert [r.stage for r in out.history][-3:] == ["prune-step", "distill", "prune"]


# --------------------------------------------------------------------------- CLI flags from config fields
def _app() -> tuple[typer.Typer, list[dict]]:
    from edgetl.cli.config_options import config_options

    seen: list[dict] = []
    app = typer.Typer()

    @app.command()
    @config_options(NoiseConfig, flags={"std": ("--std", "-s")})
    def noise(name: str = typer.Option("x", "--name"), *, options: dict) -> None:
        seen.append({"name": name, **options, "config": NoiseConfig(**options)})

    @app.command()
    def other() -> None:  # a second command, so typer keeps subcommand names
        pass

    return app, seen


def test_cli_flags_come_from_the_config_fields():
    app, seen = _app()
    runner = CliRunner()
    r = runner.invoke(app, ["noise"])
    assert r.exit_code == 0, r.output
    assert seen[-1]["config"] == NoiseConfig() and set(seen[-1]) == {"name", "config"}  # nothing given: defaults
    r = runner.invoke(app, ["noise", "-s", "0.5", "--layers", "conv1, fc", "--no-skip-bias", "--seed", "3"])
    assert r.exit_code == 0, r.output
    cfg = seen[-1]["config"]
    assert cfg == NoiseConfig(std=0.5, seed=3, layers=("conv1", "fc"), skip_bias=False)
    r = runner.invoke(app, ["noise", "--help"], env={"COLUMNS": "200"})
    assert "Standard deviation of the noise" in r.output and "0.01" in r.output and "--no-skip-bias" in r.output
    r = runner.invoke(app, ["noise", "--std", "lots"])
    assert r.exit_code == 2  # typed: click refuses a non-number


def test_prune_and_distill_commands_take_their_defaults_from_the_configs():
    from edgetl.cli.distill_cmd import distill_cmd
    from edgetl.cli.prune_cmd import prune_cmd
    from edgetl.distill.config import DistillConfig
    from edgetl.prune.config import PruneConfig
    from edgetl.stages import option_fields

    for command, cls in ((prune_cmd, PruneConfig), (distill_cmd, DistillConfig)):
        params = command.__signature__.parameters
        for f, _ in option_fields(cls, surface="cli"):
            assert f.name in params, f.name
            info = params[f.name].annotation.__metadata__[0]
            assert info.help.startswith(f.metadata["help"])  # (choices get "One of: ..." appended)
            default = f.default.value if hasattr(f.default, "value") else f.default
            if default not in (None, ()):
                assert info.show_default == str(default), f.name
        assert "options" not in params


def test_cli_prune_recover_flag_is_validated_by_the_config(lite0_digits_path, tmp_path):
    from tests.conftest import run_cli_here

    out = tmp_path / "never.pt"
    r = run_cli_here("prune", str(lite0_digits_path), "--data", "digits", "-o", str(out), "--recover", "distil",
                     "--json")
    assert r.returncode == 2 and not out.exists()
    assert "did you mean 'distill'" in json.loads(r.stdout)["error"]


def test_recipe_checks_the_extra_of_the_quantize_backend_it_will_use(monkeypatch):
    """No backend given: the config's default (onnxruntime) is what must be installed, not openvino."""
    import importlib.util

    from edgetl.errors import MissingDependencyError
    from edgetl.recipe import parse_recipe, validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="onnx"):
        validate(parse_recipe({"name": "q", "stages": [{"quantize": {}}]}))
    validate(parse_recipe({"name": "q", "stages": [{"quantize": {"backend": "openvino"}}]}))  # openvino is here


# --------------------------------------------------------------------------- export and bench in the stage shape
def test_export_stage_returns_the_primary_export_with_the_others_reachable(lite0_digits, digits, tmp_path):
    from exporters.stage import ExportConfig, export_stage, exports_of

    cfg = ExportConfig(formats=("onnx", "openvino"))
    with pytest.raises(ConfigError, match="out_dir"):
        export_stage(lite0_digits, cfg, data=digits)
    onnx = export_stage(lite0_digits, cfg, data=digits, ctx=StageContext(out_dir=tmp_path / "out"))
    assert onnx.format.value == "onnx" and onnx.history[-1].metrics["parity"]["checked"]
    both = exports_of(onnx)
    assert [a.format.value for a in both] == ["onnx", "openvino"] and both[0] is onnx
    assert all(a.path.exists() and a.path.parent == tmp_path / "out" for a in both)


def test_bench_stage_returns_typed_results_per_device(lite0_digits, digits):
    from benchmarks.harness import BenchConfig, BenchResult
    from benchmarks.stage import BenchStageConfig, bench, results_of

    quick = BenchConfig(threads=1, warmup_runs=1, warmup_s=0.0, min_time_s=0.0, min_count=3, max_time_s=5.0)
    art = bench(lite0_digits, BenchStageConfig(devices=("x86-cpu",), bench=quick), data=digits)
    assert art.history[-1].stage == "bench" and art.model is lite0_digits.model
    [r] = results_of(art)
    assert isinstance(r, BenchResult) and r.latency_ms.count >= 3 and r.accuracy is not None
    assert r.accuracy > 0.8 and "test split" in r.accuracy_source
    assert lite0_digits.history == art.history[:-1]  # the input artifact is not changed
    with pytest.raises(ConfigError, match="no bench record"):
        results_of(lite0_digits)


def test_context_progress_reporter_is_shown_while_the_stage_runs(lite0_digits, digits):
    from edgetl import progress
    from edgetl.data import ImageSet
    from edgetl.distill import DistillConfig, distill

    class Recorder:
        def __init__(self) -> None:
            self.opened: list[str] = []
            self.steps = 0

        def open(self, description, total):
            self.opened.append(description)
            return self

        def close(self, task):
            pass

        def advance(self, n=1, **fields):
            self.steps += 1

    def cut(s: ImageSet, n: int) -> ImageSet:
        return ImageSet(s.images[:n], s.labels[:n])

    small = dataclasses.replace(digits, train=cut(digits.train, 64), val=cut(digits.val, 32), test=cut(digits.test, 32))
    rec, before = Recorder(), progress.set_reporter(None)
    try:
        distill(lite0_digits, DistillConfig(student="edgetl_tinycnn", epochs=1, batch_size=32, views="original"),
                data=small, ctx=StageContext(progress=rec))
        assert progress.set_reporter(None).__class__.__name__ == "_NullReporter"  # restored after the stage
    finally:
        progress.set_reporter(before)
    assert "distill" in rec.opened and rec.steps == 2  # 64 images in batches of 32, one epoch
