"""The shape of a stage config that runs once per target with one set of options for all of them.

The bench stage measures on each device profile with one :class:`~benchmarks.harness.BenchConfig`; the export
stage writes each format with one :class:`~exporters.base.ExportOptions`. A recipe writes the targets and the
options side by side (``devices: [x86-cpu], threads: 2``); the config holds them apart. This base writes that
plumbing once: the targets normalised to a tuple and each checked, the options built from a mapping, the
recipe keys (:meth:`option_names`), :meth:`from_options` and :meth:`to_dict`. It lives in core so that both
``benchmarks`` and ``exporters`` may build on it.

Example::

    @dataclass(frozen=True)
    class BenchStageConfig(MultiTargetConfig):
        TARGETS, OPTIONS = "devices", "bench"
        EMPTY = "bench needs at least one device profile, e.g. devices: [x86-cpu]"

        devices: tuple[str, ...] = ("x86-cpu",)
        bench: BenchConfig = field(default_factory=BenchConfig)

        @classmethod
        def check_target(cls, name: str) -> None:
            load_profile(name)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edgetl.errors import ConfigError

__all__ = ["MultiTargetConfig"]


class MultiTargetConfig:
    """Base of a frozen dataclass with a tuple of targets (field ``TARGETS``) and one options dataclass (field
    ``OPTIONS``, whose ``default_factory`` is its class). Subclasses set ``EMPTY`` (the message when no target
    is given) and :meth:`check_target`; other fields are their own (kept out of the recipe keys)."""

    TARGETS: ClassVar[str]
    OPTIONS: ClassVar[str]
    EMPTY: ClassVar[str]

    def __post_init__(self) -> None:
        targets = self.split_targets(getattr(self, self.TARGETS))
        if not targets:
            raise ConfigError(self.EMPTY)
        for t in targets:
            self.check_target(t)  # an unknown name suggests the nearest
        object.__setattr__(self, self.TARGETS, targets)
        if not isinstance(getattr(self, self.OPTIONS), self.options_class()):
            object.__setattr__(self, self.OPTIONS, self.build_options(dict(getattr(self, self.OPTIONS))))

    @classmethod
    def split_targets(cls, value: Any) -> tuple[str, ...]:
        """One name or a sequence of names, as a tuple of names."""
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)

    @classmethod
    def check_target(cls, name: str) -> None:
        raise NotImplementedError(f"{cls.__name__} must say how a target is checked")

    @classmethod
    def options_class(cls) -> type:
        return next(f.default_factory for f in dataclasses.fields(cls) if f.name == cls.OPTIONS)  # type: ignore[return-value]

    @classmethod
    def build_options(cls, values: Mapping[str, Any]) -> Any:
        """The options dataclass from a mapping (through its ``from_mapping`` where it has one)."""
        opt_cls = cls.options_class()
        build = getattr(opt_cls, "from_mapping", None)
        return build(values) if build is not None else opt_cls(**values)

    @classmethod
    def option_names(cls) -> list[str]:
        """The keys of the recipe's stage: the targets and the options, side by side."""
        return [cls.TARGETS, *(f.name for f in dataclasses.fields(cls.options_class()))]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]):
        opts = dict(options)
        given = {cls.TARGETS: opts.pop(cls.TARGETS)} if cls.TARGETS in opts else {}
        return cls(**given, **{cls.OPTIONS: cls.build_options(opts)})

    def to_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
               if f.name not in (self.TARGETS, self.OPTIONS)}
        return {self.TARGETS: list(getattr(self, self.TARGETS)), **getattr(self, self.OPTIONS).to_dict(), **own}
