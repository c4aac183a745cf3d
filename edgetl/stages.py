"""Every stage has one shape, ``stage(artifact, config, *, data=None, ctx=None) -> Artifact``, and one row here.

A row names the stage, its config class and its function by ``module:attribute`` (imported only when that stage
is used, so listing the stages imports no backend) and its rank in a recipe (stages of rank 0 come first, in
either order; then 1, 2, ...). The recipe validator, the pipeline and the CLI all read this table: a new stage
kind is one row and one module, and its options are the fields of its config class, written once.

What is not an option (where files go, the models a stage learns from, the progress display) travels in a
:class:`StageContext`.

Example::

    from edgetl.stages import StageContext, run_stage
    small = run_stage(teacher, PruneConfig(ratio=0.5), data=splits)
    q = run_stage(small, QuantizeConfig(backend="openvino"), data=splits, ctx=StageContext(out_dir=Path("q")))
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, MissingDependencyError, UnknownNameError, check_names

__all__ = ["STAGES", "StageContext", "StageKind", "build_config", "kind_of", "option", "option_fields", "option_names",
           "register", "run_stage", "stage_kind"]


def option(default: Any = dataclasses.MISSING, *, help: str = "", recipe: bool = True, cli: bool = True,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text; ``recipe=False``/``cli=False`` keep it off those surfaces.

    Example::

        epochs: int = option(10, help="Epochs of the main phase.")
    """
    meta = {"help": help, "recipe": recipe, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StageContext:
    """What a stage needs besides its subject, options and data.

    ``output``: the exact file the stage writes its artifact to (the CLI's ``-o``); ``out_dir``: a directory in
    which the stage names its own files (the pipeline's stage directory); ``work_dir``: scratch state that
    survives an interruption (distillation's resume checkpoint); ``teachers``: the models a stage learns from
    (distillation, pruning's distillation recovery); ``progress``: a :mod:`edgetl.progress` reporter shown while
    the stage runs (None: keep the one installed); ``overwrite``: an existing output may be replaced.
    """

    output: Path | None = None
    out_dir: Path | None = None
    work_dir: Path | None = None
    teachers: tuple[Any, ...] = ()
    progress: Any = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("output", "out_dir", "work_dir"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        t = self.teachers
        object.__setattr__(self, "teachers", tuple(t) if isinstance(t, (list, tuple)) else (t,))

    def file(self, name: str) -> Path | None:
        """Where an artifact goes: ``output`` if given, else ``out_dir / name``, else None (the stage decides)."""
        if self.output is not None:
            return self.output
        return self.out_dir / name if self.out_dir is not None else None

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """Install this context's progress reporter for the duration of a stage."""
        if self.progress is None:
            yield
            return
        from edgetl.progress import set_reporter

        previous = set_reporter(self.progress)
        try:
            yield
        finally:
            set_reporter(previous)


@dataclass(frozen=True)
class StageKind:
    """One registered stage: its name in recipes, config class and function (``module:attr``), and rank."""

    name: str
    config: str
    run: str
    rank: int
    description: str = ""
    check: str | None = None  # ``module:function(config)``: raises MissingDependencyError when it cannot run here

    def config_class(self) -> type:
        return _resolve(self.config)

    def function(self):
        return _resolve(self.run)

    def check_environment(self, config: Any) -> None:
        check = getattr(config, "check_environment", None)
        if check is not None:
            check()
        if self.check is not None:
            _resolve(self.check)(config)


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Add a stage kind (replacing one of the same name): the recipe, pipeline and CLI then know it."""
    STAGES[kind.name] = kind
    return kind


for _row in (
    StageKind("prune", "edgetl.prune.config:PruneConfig", "edgetl.prune.pruner:prune", 0,
              "structured channel pruning (LRP by default), optional recovery"),
    StageKind("distill", "edgetl.distill.config:DistillConfig", "edgetl.distill.distiller:distill", 0,
              "knowledge distillation from the teachers into a student"),
    StageKind("quantize", "edgetl.quantize.config:QuantizeConfig", "edgetl.quantize.quantizer:quantize", 1,
              "int8/fp16 post-training quantization, accuracy-checked", check="edgetl.stages:_quantize_extras"),
    StageKind("export", "exporters.stage:ExportConfig", "exporters.stage:export_stage", 2,
              "export to deployment formats, parity-checked"),
    StageKind("bench", "benchmarks.stage:BenchStageConfig", "benchmarks.stage:bench", 3,
              "latency on each device profile, with test accuracy"),
    StageKind("package", "edgetl.package.stage:PackageConfig", "edgetl.package.stage:package_stage", 4,
              "a bundle per device for the recommended artifact (runs after the report)"),
):
    register(_row)


def stage_kind(name: str) -> StageKind:
    if name not in STAGES:
        raise UnknownNameError("stage", str(name), list(STAGES))
    return STAGES[name]


def kind_of(config: Any) -> StageKind:
    """The stage a config belongs to, by its class (no stage module is imported to find it)."""
    ref = f"{type(config).__module__}:{type(config).__qualname__}"
    for kind in STAGES.values():
        if kind.config == ref:
            return kind
    for kind in STAGES.values():  # a subclass, or a class re-exported under another module's name
        with contextlib.suppress(ImportError, AttributeError):
            if isinstance(config, kind.config_class()):
                return kind
    raise ConfigError(f"{type(config).__name__} is no stage config; the stages take "
                      + ", ".join(f"{k.config.partition(':')[2]} ({k.name})" for k in STAGES.values()))


def run_stage(artifact, config: Any, *, data=None, ctx: StageContext | None = None):
    """Run the stage that ``config``'s class belongs to: ``run_stage(art, PruneConfig(...), data=d)``."""
    return kind_of(config).function()(artifact, config, data=data, ctx=ctx)


# --------------------------------------------------------------------------- options of a config class
def option_names(cls: type, *, surface: str = "recipe") -> list[str]:
    """The keys a recipe (or the CLI) may set on ``cls``: its fields unless marked off that surface."""
    custom = getattr(cls, "option_names", None)
    if custom is not None:
        return list(custom())
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get(surface, True)]


def option_fields(cls: type, *, surface: str = "cli") -> list[tuple[dataclasses.Field, Any]]:
    """``(field, resolved type)`` of each option of a config dataclass on ``surface``.

    A type the config's module imports only for type checkers (a choice from a heavy module, parsed by the
    config itself) resolves to ``str``: that is what a user writes for it.
    """
    local: dict[str, Any] = {}
    while True:
        try:
            hints = typing.get_type_hints(cls, localns=local)
            break
        except NameError as e:
            if not getattr(e, "name", None) or e.name in local:
                raise
            local[e.name] = str
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get(surface, True)]


def build_config(cls: type, options: Mapping[str, Any], *, where: str, defaults: Mapping[str, Any] | None = None):
    """``cls`` from a recipe's options: unknown keys suggest the nearest valid one; values validate in the class.

    ``defaults`` fill fields the options leave out (the recipe's seed), where the class has them.
    """
    check_names(options, option_names(cls), f"key in {where}")
    fields = {f.name for f in dataclasses.fields(cls)}
    opts = {**{k: v for k, v in (defaults or {}).items() if k in fields}, **options}
    build = getattr(cls, "from_options", None)
    return build(opts) if build is not None else cls(**opts)


# --------------------------------------------------------------------------- environment checks
_QUANTIZE_MODULES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("nncf", "openvino"),
                     "tensorrt": ("onnxruntime", "onnx"), "pytorch": ("executorch", "torchao")}
_QUANTIZE_EXTRA = {"openvino": "openvino", "pytorch": "mobile"}  # the pip extra of each backend (default: onnx)


def _quantize_extras(config: Any) -> None:
    """The backend the config names (its own default included) must be installed."""
    import importlib.util

    backend = config.backend.value
    for module in _QUANTIZE_MODULES.get(backend, ()):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, _QUANTIZE_EXTRA.get(backend, "onnx"), f"{backend} quantization")
