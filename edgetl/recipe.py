"""Recipes: one YAML file that chains the stages, validated whole before any slow step runs.

A recipe names the model and data (both overridable on the command line), accuracy/latency budgets, and an
ordered list of stages, each with the options of that stage's config::

    name: cpu-openvino-int8
    model: teacher.pt
    data: mnist5k
    budgets: {max_accuracy_drop: 1.0, target_latency_ms: null, device: x86-cpu}
    stages:
      - prune: {criterion: lrp, ratio: 0.5}
      - distill: {epochs: 3}                 # recovery from the unpruned model
      - quantize: {backend: openvino, precision: int8}
      - export: {formats: [onnx, openvino]}
      - bench: {devices: [x86-cpu], threads: 2}

Validation covers unknown keys (with the nearest valid one), stage order, the formats each stage accepts,
installed extras and device profiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, InputFileError, MissingDependencyError, UnknownNameError, check_names

__all__ = ["BUILTIN_RECIPES", "Budgets", "Recipe", "Stage", "STAGE_ORDER", "load_recipe", "list_recipes"]

RECIPE_DIR = Path(__file__).with_name("recipes")
STAGE_ORDER = ("prune", "distill", "quantize", "export", "bench")
# prune and distill both work on the PyTorch model and may come in either order (distil into a small student,
# then prune it; or prune the teacher, then recover by distillation); the rest follow in this order.
STAGE_RANK = {"prune": 0, "distill": 0, "quantize": 1, "export": 2, "bench": 3}
_TOP_KEYS = ("name", "description", "model", "data", "seed", "budgets", "stages", "baselines")
_BASELINES = ("teacher-int8",)  # plain NNCF int8 of the unpruned model, measured beside the result


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float | None = None  # points of top-1 accuracy vs the input model
    target_latency_ms: float | None = None  # p90 on ``device``
    device: str = "x86-cpu"
    ratios: tuple[float, ...] = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2)  # pruning ratios the budget search tries

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise ConfigError(f"budgets.max_accuracy_drop is in points (0..100), got {self.max_accuracy_drop}")
        if self.target_latency_ms is not None and self.target_latency_ms <= 0:
            raise ConfigError(f"budgets.target_latency_ms must be positive, got {self.target_latency_ms}")
        rs = tuple(float(r) for r in self.ratios)
        if not rs or any(not 0 < r < 1 for r in rs):
            raise ConfigError(f"budgets.ratios must be pruning ratios in (0, 1), got {self.ratios}")
        object.__setattr__(self, "ratios", tuple(sorted(set(rs), reverse=True)))

    @property
    def active(self) -> bool:
        return self.max_accuracy_drop is not None or self.target_latency_ms is not None


@dataclass(frozen=True)
class Stage:
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        return json.dumps({"kind": self.kind, "options": self.options}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[Stage, ...]
    model: str | None = None
    data: str | None = None
    description: str = ""
    seed: int = 0
    budgets: Budgets = Budgets()
    baselines: tuple[str, ...] = ()
    source: str = "<memory>"

    def with_inputs(self, *, model: str | None = None, data: str | None = None) -> Recipe:
        return dataclasses.replace(self, model=model or self.model, data=data or self.data)

    def fingerprint(self) -> str:
        """Identity of the recipe's content (not of its inputs): a run directory belongs to one recipe."""
        payload = json.dumps({"name": self.name, "stages": [s.canonical() for s in self.stages],
                              "budgets": dataclasses.asdict(self.budgets), "baselines": self.baselines,
                              "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def stage(self, kind: str) -> Stage | None:
        return next((s for s in self.stages if s.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "model": self.model, "data": self.data,
                "seed": self.seed, "budgets": dataclasses.asdict(self.budgets), "baselines": list(self.baselines),
                "stages": [{s.kind: s.options} for s in self.stages]}


def list_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


BUILTIN_RECIPES = tuple(list_recipes())


def load_recipe(name_or_path: str | Path, *, model: str | None = None, data: str | None = None) -> Recipe:
    """Read a built-in recipe by name, or a YAML file, and validate it completely."""
    import yaml

    path = Path(name_or_path)
    builtin = list_recipes()
    if str(name_or_path) in builtin:
        path = builtin[str(name_or_path)]
    elif not path.exists():
        if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
            raise InputFileError(f"recipe file not found: {name_or_path}")
        raise UnknownNameError("recipe", str(name_or_path), builtin, hint="Or give a recipe YAML file.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    recipe = parse_recipe(raw, source=str(path)).with_inputs(model=model, data=data)
    validate(recipe)
    return recipe


def _check_keys(d: dict, valid, where: str) -> None:
    check_names(d, valid, f"key in {where}")


def parse_recipe(raw: Any, *, source: str = "<memory>") -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with keys {', '.join(_TOP_KEYS)}")
    _check_keys(raw, _TOP_KEYS, f"recipe {source}")
    stages_raw = raw.get("stages") or []
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list like [- prune: {{ratio: 0.5}}]")
    stages = []
    for i, item in enumerate(stages_raw):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{source}: stage {i + 1} must be one 'name: {{options}}' entry, got {item!r}")
        (kind, opts), = item.items()
        if kind not in STAGE_ORDER:
            raise UnknownNameError("stage", str(kind), STAGE_ORDER)
        if opts is not None and not isinstance(opts, dict):
            raise ConfigError(f"{source}: options of stage {kind!r} must be a mapping, got {opts!r}")
        stages.append(Stage(kind, dict(opts or {})))
    budgets_raw = raw.get("budgets") or {}
    if not isinstance(budgets_raw, dict):
        raise ConfigError(f"{source}: 'budgets' must be a mapping")
    _check_keys(budgets_raw, [f.name for f in dataclasses.fields(Budgets)], "budgets")
    baselines = tuple(raw.get("baselines") or ())
    for b in baselines:
        if b not in _BASELINES:
            raise UnknownNameError("baseline", str(b), _BASELINES)
    return Recipe(name=str(raw.get("name") or Path(source).stem), stages=tuple(stages), model=raw.get("model"),
                  data=raw.get("data"), description=str(raw.get("description") or ""), seed=int(raw.get("seed", 0)),
                  budgets=Budgets(**budgets_raw), baselines=baselines, source=source)


# --------------------------------------------------------------------------- validation
def _config_fields(kind: str) -> dict[str, Any]:
    """The option names each stage takes (its config dataclass fields plus pipeline-level keys)."""
    if kind == "prune":
        from edgetl.prune import PruneConfig

        return {**{f.name: f for f in dataclasses.fields(PruneConfig)}, "recover": None}
    if kind == "distill":
        from edgetl.distill import DistillConfig

        skip = {"checkpoint", "resume", "history_path", "device"}
        return {**{f.name: f for f in dataclasses.fields(DistillConfig) if f.name not in skip}, "student": None}
    if kind == "quantize":
        from edgetl.quantize import QuantizeConfig

        return {f.name: f for f in dataclasses.fields(QuantizeConfig)}
    if kind == "export":
        from exporters.base import ExportOptions

        return {**{f.name: f for f in dataclasses.fields(ExportOptions)}, "formats": None}
    if kind == "bench":
        from benchmarks.harness import BenchConfig

        return {**{f.name: f for f in dataclasses.fields(BenchConfig)}, "devices": None}
    raise UnknownNameError("stage", kind, STAGE_ORDER)


_EXTRAS = {"quantize": {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("nncf", "openvino"),
                        "tensorrt": ("onnxruntime", "onnx"), "pytorch": ("executorch", "torchao")}}
_EXTRA_OF = {"openvino": "openvino", "pytorch": "mobile"}  # the pip extra of each backend (default: onnx)


def validate(recipe: Recipe) -> None:
    """Everything that can be checked without running a stage: keys, order, formats, extras, devices."""
    kinds = [s.kind for s in recipe.stages]
    for a, b in zip(kinds, kinds[1:], strict=False):
        if STAGE_RANK[a] > STAGE_RANK[b]:
            raise ConfigError(f"recipe {recipe.name!r}: stage {b!r} cannot come after {a!r}; the order is "
                              "prune/distill (either order) -> quantize -> export -> bench (each may be left out)")
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ConfigError(f"recipe {recipe.name!r}: stage {kind!r} appears {kinds.count(kind)} times; give it once")
    for stage in recipe.stages:
        valid = _config_fields(stage.kind)
        _check_keys(stage.options, list(valid), f"{stage.kind} options")
        _build_config(stage)  # typed configs validate their values
    q = recipe.stage("quantize")
    if q is not None:
        backend = str(_build_config(q).backend)  # QuantizeConfig's own default when the recipe names none
        for module in _EXTRAS["quantize"].get(backend, ()):
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(module, _EXTRA_OF.get(backend, "onnx"), f"{backend} quantization")
    e = recipe.stage("export")
    if e is not None:
        from exporters.base import check_dependencies, format_spec

        for name in _formats(e):
            check_dependencies(format_spec(name))
    b = recipe.stage("bench")
    devices = list(b.options.get("devices", ["x86-cpu"])) if b is not None else []
    if recipe.budgets.target_latency_ms is not None:
        devices.append(recipe.budgets.device)
        if b is None:
            raise ConfigError("budgets.target_latency_ms needs a bench stage to measure latency; add '- bench: {}'")
    if devices:
        from benchmarks.profiles import load_profile

        for d in devices:
            load_profile(d)
    if recipe.budgets.active and recipe.stage("prune") is None:
        raise ConfigError("budgets search the pruning ratio; add a prune stage (its ratio is then searched)")
    if recipe.baselines and b is None:
        raise ConfigError("baselines are measured by the bench stage; add '- bench: {}'")


def _formats(stage: Stage) -> list[str]:
    f = stage.options.get("formats", ["onnx"])
    names = [f] if isinstance(f, str) else list(f)
    return [n.strip() for item in names for n in str(item).split(",") if n.strip()]


def _build_config(stage: Stage):
    """The typed config of a stage from its recipe options (pipeline-level keys removed)."""
    opts = dict(stage.options)
    if stage.kind == "prune":
        from edgetl.prune import PruneConfig

        opts.pop("recover", None)
        return PruneConfig(**opts)
    if stage.kind == "distill":
        from edgetl.distill import DistillConfig

        opts.pop("student", None)
        return DistillConfig(**opts)
    if stage.kind == "quantize":
        from edgetl.quantize import QuantizeConfig

        return QuantizeConfig(**opts)
    if stage.kind == "export":
        from exporters.base import ExportOptions, format_spec

        for n in _formats(stage):
            format_spec(n)
        opts.pop("formats", None)
        return ExportOptions.from_mapping(opts)
    if stage.kind == "bench":
        from benchmarks.harness import BenchConfig

        opts.pop("devices", None)
        return BenchConfig(**opts)
    raise UnknownNameError("stage", stage.kind, STAGE_ORDER)


build_config = _build_config
stage_formats = _formats
