"""Recipes: one YAML file that chains the stages, validated whole before any slow step runs.

A recipe names the model and data (both overridable on the command line), accuracy/latency budgets, and an
ordered list of stages, each with the options of that stage's config::

    name: cpu-openvino-int8
    model: teacher.pt
    data: mnist5k
    budgets: {quantize: 0.5, prune: 3, distill: 2, export: 0.5}
    stages:
      - prune: {criterion: lrp, ratio: 0.5}
      - distill: {epochs: 3}                 # recovery from the unpruned model
      - quantize: {backend: openvino, precision: int8}
      - export: {formats: [onnx, openvino]}
      - bench: {devices: [x86-cpu], threads: 2}

``budgets`` holds two kinds of key:

- **per-stage quality gates** (:mod:`edgetl.gates`): ``quantize``, ``prune``, ``distill``, ``export``, each in
  points of top-1 accuracy the stage may lose against *its own input* on the validation split (defaults 1.0,
  2.0, 2.0, 0.5). A stage's own option wins (``quantize: {max_drop: 2}``). The quantize budget also drives its
  fallback (layers kept in float until the drop is inside it). An output past its budget is never recommended;
  a prune or distill output past it stops the compressed branch.
- **the pruning-ratio search**: ``max_accuracy_drop`` (points against the *source* model, end to end) and
  ``target_latency_ms`` (p90 on ``device``); with either set, the prune stage's ratio is searched over
  ``ratios`` and the first (most aggressive) that meets them wins.

Any model, any task: ``task:``, ``inputs:``, ``outputs:``, ``roles:`` are the model contract, in the strings of the
CLI's ``--task``, ``--input``, ``--output``, ``--role`` (``edgetl run`` takes those flags too and they win); with
``arch:`` (``arch_args:``) for a state dict of your own architecture. With a task other than classification (or a
model that is no labelled classifier) every score of the run is the task's fidelity against the source model on
held-out inputs, and the budgets above are points of that metric (:mod:`edgetl.run_task`)::

    task: segmentation
    inputs: [image:Nx1xHxW:float32]
    budgets: {prune: 10, distill: 8, quantize: 2, export: 0.5}

Validation covers unknown keys (with the nearest valid one), stage order, the formats each stage accepts,
installed extras and device profiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, InputFileError, UnknownNameError, check_names
from edgetl.stages import STAGES, stage_kind
from edgetl.stages import build_config as _build

__all__ = ["BUILTIN_RECIPES", "Budgets", "Recipe", "Stage", "build_config", "load_recipe", "list_recipes",
           "validate"]

RECIPE_DIR = Path(__file__).with_name("recipes")
# The stages, their order and options come from the stage registry (edgetl.stages): prune and distill both work
# on the PyTorch model and may come in either order (rank 0: distil into a small student, then prune it; or
# prune the teacher, then recover by distillation); quantize, export and bench follow in this order.
_TOP_KEYS = ("name", "description", "model", "data", "seed", "budgets", "stages", "baselines", *("arch", "arch_args"),
             *("task", "inputs", "outputs", "roles", "opt_shapes"))
_CONTRACT_KEYS = ("task", "inputs", "outputs", "roles", "opt_shapes")  # the CLI's --task/--input/--output/--role, same strings
_BASELINES = ("teacher-int8",)  # plain NNCF int8 of the unpruned model, measured beside the result


# The gated stages whose budget a recipe may set (edgetl.gates.DEFAULT_BUDGETS has their defaults).
_GATED = ("quantize", "prune", "distill", "export")


@dataclass(frozen=True)
class Budgets:
    """A recipe's ``budgets``: per-stage quality gates and the pruning-ratio search's targets."""

    max_accuracy_drop: float | None = None  # points of top-1 accuracy vs the input model
    target_latency_ms: float | None = None  # p90 on ``device``
    device: str = "x86-cpu"
    ratios: tuple[float, ...] = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2)  # pruning ratios the budget search tries
    quantize: float | None = None  # per-stage gates: points of top-1 lost against the stage's input
    prune: float | None = None
    distill: float | None = None
    export: float | None = None

    def __post_init__(self) -> None:
        for name in _GATED:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
                raise ConfigError(f"budgets.{name} is the accuracy the {name} stage may lose, in points (0..100; "
                                  f"e.g. {name}: 1.0), got {v!r}")
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
        """Whether the pruning-ratio search runs (per-stage gates always apply)."""
        return self.max_accuracy_drop is not None or self.target_latency_ms is not None

    @property
    def stages(self) -> dict[str, float]:
        """The per-stage budgets the recipe sets (for :func:`edgetl.gates.budget_for`)."""
        return {k: float(getattr(self, k)) for k in _GATED if getattr(self, k) is not None}

    def identity(self) -> dict[str, Any]:
        """What the recipe's fingerprint covers: per-stage budgets only where set (older runs keep theirs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _GATED or v is not None}


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe: its kind, its options as written, and (once validated) its typed config."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    config: Any = field(default=None, compare=False, repr=False)
    # a prune stage's latency target (edgetl.prune.latency_target.LatencyOptions), once validated
    latency: Any = field(default=None, compare=False, repr=False)

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
    arch: str | None = None  # a state dict's architecture: a zoo name or your own module.path:ClassName
    arch_args: dict[str, Any] | None = None
    task: str | None = None  # the model contract (edgetl.contract.parse_flags): scored by fidelity when set
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    opt_shapes: tuple[str, ...] = ()  # the size a dynamic input is traced and timed at (default: the data's)

    def with_inputs(self, *, model: str | None = None, data: str | None = None, arch: str | None = None,
                    arch_args: dict[str, Any] | None = None, task: str | None = None, inputs=(), outputs=(),
                    roles=(), opt_shapes=()) -> Recipe:
        """The recipe with what the command line gives instead of its own keys (each only where given)."""
        r = dataclasses.replace(self, model=model or self.model, data=data or self.data, arch=arch or self.arch,
                                arch_args=arch_args if arch_args is not None else self.arch_args,
                                task=task or self.task, inputs=tuple(inputs) or self.inputs,
                                outputs=tuple(outputs) or self.outputs, roles=tuple(roles) or self.roles,
                                opt_shapes=tuple(opt_shapes) or self.opt_shapes)
        r.contract_flags()  # a bad --task/--input/--output/--role is one line here, before any work
        return r

    def contract_flags(self):
        """The recipe's contract keys parsed as the CLI parses them (:func:`edgetl.contract.parse_flags`)."""
        from edgetl.contract import parse_flags

        return parse_flags(inputs=self.inputs, outputs=self.outputs, roles=self.roles, task=self.task,
                           opt_shapes=self.opt_shapes)

    def contract_keys(self) -> dict[str, Any]:
        """The contract keys the recipe sets (none for a classifier scored by its labels)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k in _CONTRACT_KEYS if (v := getattr(self, k))}

    def fingerprint(self) -> str:
        """Identity of the recipe's content (not of its inputs): a run directory belongs to one recipe."""
        payload = json.dumps({"name": self.name, "stages": [s.canonical() for s in self.stages],
                              "budgets": self.budgets.identity(), "baselines": self.baselines,
                              "seed": self.seed, **self.contract_keys()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def stage(self, kind: str) -> Stage | None:
        return next((s for s in self.stages if s.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "model": self.model, "data": self.data,
                "seed": self.seed, "budgets": dataclasses.asdict(self.budgets), "baselines": list(self.baselines),
                "stages": [{s.kind: s.options} for s in self.stages], **self.contract_keys(),
                **({"arch": self.arch} if self.arch else {}), **({"arch_args": self.arch_args} if self.arch_args else {})}


def list_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


BUILTIN_RECIPES = tuple(list_recipes())


def load_recipe(name_or_path: str | Path, *, model: str | None = None, data: str | None = None,
                **overrides: Any) -> Recipe:
    """Read a built-in recipe by name, or a YAML file, and validate it completely; ``overrides`` are the command
    line's ``arch``, ``arch_args``, ``task``, ``inputs``, ``outputs``, ``roles`` (see :meth:`Recipe.with_inputs`)."""
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
    return validate(parse_recipe(raw, source=str(path)).with_inputs(model=model, data=data, **overrides))


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
        stage_kind(str(kind))  # an unknown stage suggests the nearest
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
    recipe = Recipe(name=str(raw.get("name") or Path(source).stem), stages=tuple(stages), model=raw.get("model"),
                    data=raw.get("data"), description=str(raw.get("description") or ""), seed=int(raw.get("seed", 0)),
                    budgets=Budgets(**budgets_raw), baselines=baselines, source=source, **_model_keys(raw, source))
    recipe.contract_flags()  # the contract keys parse as the CLI's flags do: a bad one is one line, now
    return recipe


def _model_keys(raw: dict, source: str) -> dict[str, Any]:
    """``arch``/``arch_args`` and the contract keys: ``task: segmentation``, ``inputs: [image:Nx1xHxW:float32]``
    (a list, or one string), ``outputs``, ``roles``."""
    out: dict[str, Any] = {}
    for k in ("inputs", "outputs", "roles", "opt_shapes"):
        v = raw.get(k)
        if v is None:
            continue
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(i, (str, int)) for i in items):
            raise ConfigError(f"{source}: '{k}' is a list of strings like the CLI's --{k[:-1]} (e.g. "
                              f"{k}: [{_EXAMPLE[k]}]), got {v!r}")
        out[k] = tuple(str(i) for i in items)
    for k in ("task", "arch"):
        if raw.get(k) is not None:
            out[k] = str(raw[k])
    if raw.get("arch_args") is not None:
        if not isinstance(raw["arch_args"], dict):
            raise ConfigError(f"{source}: 'arch_args' is a mapping of constructor arguments (e.g. {{width: 12}}), "
                              f"got {raw['arch_args']!r}")
        out["arch_args"] = dict(raw["arch_args"])
    return out


_EXAMPLE = {"inputs": "image:Nx1xHxW:float32", "outputs": "boxes,scores", "roles": "boxes:boxes:N,A,4:xyxy",
            "opt_shapes": "image:1x1x28x28"}


# --------------------------------------------------------------------------- validation
def validate(recipe: Recipe) -> Recipe:
    """Everything that can be checked without running a stage: keys, order, values, extras, devices.

    Returns the recipe with each stage's typed config built (once: the pipeline runs these very configs).
    """
    kinds = [s.kind for s in recipe.stages]
    ranks = {k: stage_kind(k).rank for k in kinds}
    for a, b in zip(kinds, kinds[1:], strict=False):
        if ranks[a] > ranks[b]:
            raise ConfigError(f"recipe {recipe.name!r}: stage {b!r} cannot come after {a!r}; the order is "
                              f"{_order_text()} (each may be left out)")
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ConfigError(f"recipe {recipe.name!r}: stage {kind!r} appears {kinds.count(kind)} times; give it once")
    stages = tuple(dataclasses.replace(s, config=build_config(s, seed=recipe.seed), latency=_latency(s))
                   for s in recipe.stages)
    for s in stages:
        stage_kind(s.kind).check_environment(s.config)
    recipe = dataclasses.replace(recipe, stages=stages)
    prune = recipe.stage("prune")
    if prune is not None and prune.latency is not None and recipe.budgets.active:
        raise ConfigError("the prune stage's target_latency_ms chooses every layer's width; budgets.max_accuracy_drop "
                          "and budgets.target_latency_ms search a pruning ratio instead: use one or the other")
    b = recipe.stage("bench")
    devices = list(b.config.devices) if b is not None else []
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
    return recipe


def _order_text() -> str:
    by_rank: dict[int, list[str]] = {}
    for k in STAGES.values():
        by_rank.setdefault(k.rank, []).append(k.name)
    return " -> ".join("/".join(names) + (" (either order)" if len(names) > 1 else "")
                       for _, names in sorted(by_rank.items()))


def build_config(stage: Stage, *, seed: int = 0):
    """The typed config of a stage: the one validation built, else one built from its recipe options.

    The recipe's ``seed`` is the default of every config that has a seed field. A prune stage's latency-target
    keys (``target_latency_ms``, ``device``, ``runtime``, ``threads``, ``latency_cache``, ...) are not its
    config's: the pipeline measures the latency model and injects it (:mod:`edgetl.run_latency`).
    """
    if stage.config is not None:
        return stage.config
    kind = stage_kind(stage.kind)
    options = stage.options
    if stage.kind == "prune":
        from edgetl.prune.latency_target import LATENCY_KEYS, LatencyOptions
        from edgetl.stages import option_names

        valid = dict.fromkeys([*option_names(kind.config_class()), *LATENCY_KEYS])
        check_names(options, list(valid), f"key in {stage.kind} options")
        options = LatencyOptions.split(options)[1]
    return _build(kind.config_class(), options, where=f"{stage.kind} options", defaults={"seed": seed})


def _latency(stage: Stage):
    """A prune stage's latency target, checked against its device profile and runtime; None without one."""
    if stage.kind != "prune":
        return None
    from edgetl.prune.latency_target import LatencyOptions

    latency = LatencyOptions.split(stage.options)[0]
    if latency is not None:
        from benchmarks.profiles import load_profile
        from edgetl.run_latency import choose_runtime

        choose_runtime(load_profile(latency.device), latency.runtime, flag="prune runtime")
    return latency
