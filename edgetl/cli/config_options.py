"""Command-line options derived from a stage's config dataclass, so each option's name, type, default and help
are written once, on the config field (``edgetl.stages.option(default, help=...)``).

Every derived option defaults to "not given" on the command line; the config's own default applies then and
is what ``--help`` shows. The command receives the options that were given as one mapping and builds the config
from it, so a value is validated by the config, never by a copy of its rules.

Example::

    @config_options(PruneConfig, flags={"ratio": ("--ratio", "-r")})
    def prune_cmd(model: ..., *, options: dict) -> None:
        cfg = PruneConfig(**options)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgetl.stages import option_fields

__all__ = ["config_options", "derived_parameters"]

_TAIL = ("json_", "debug")  # the options every command ends with stay last in --help


def _inner(tp: Any) -> tuple[Any, bool]:
    """``(type, optional)`` with ``X | None`` unwrapped."""
    args = typing.get_args(tp)
    if args and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _shown(default: Any) -> str | bool:
    if default is None or default is dataclasses.MISSING:
        return False
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) if default else False
    return str(default)


def _splitter(item: Any, flag: str) -> Callable[[str], tuple]:
    """Comma-separated text to the tuple a ``tuple[X, ...]`` field holds (``str`` items are left to the config)."""
    from edgetl.errors import ConfigError

    def split(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if item in (int, float):
            try:
                return tuple(item(p) for p in parts)
            except ValueError:
                raise ConfigError(f"{flag} must be comma-separated numbers, e.g. 0.7,0.3; got {text!r}") from None
        return tuple(parts)

    return split


def _derive(f: dataclasses.Field, tp: Any, flags: tuple[str, ...]) -> tuple[inspect.Parameter, Callable | None]:
    """One typer option for a config field, and the converter its text needs (None: passed as typed)."""
    inner, _ = _inner(tp)
    origin = typing.get_origin(inner)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    help_ = f.metadata.get("help", "")
    convert = None
    if inner is bool:
        kind: Any = bool
        name = flags[0].lstrip("-")
        flags = (f"{flags[0]}/--no-{name}", *flags[1:])
    elif inner in (int, float, str, Path):
        kind = inner
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        kind = str
        help_ = f"{help_} One of: {', '.join(str(m.value) for m in inner)}.".strip()
    elif origin is tuple:
        kind = str
        item = typing.get_args(inner)[0] if typing.get_args(inner) else str
        if typing.get_origin(item) is None:  # tuples of tuples (feature pairs) are parsed by the config
            convert = _splitter(item, flags[0])
    else:
        raise TypeError(f"cannot make a command-line option of {f.name}: {tp!r}; mark the field cli=False")
    opt = typer.Option(*flags, help=help_, show_default=_shown(default))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], opt]), convert


def derived_parameters(cls: type, *, flags: Mapping[str, tuple[str, ...]] | None = None,
                       skip: Iterable[str] = ()) -> list[tuple[inspect.Parameter, Callable | None]]:
    """The typer parameters (with converters) for the CLI fields of ``cls``."""
    flags, skip = dict(flags or {}), set(skip)
    return [_derive(f, tp, flags.get(f.name, (f"--{f.name.replace('_', '-')}",)))
            for f, tp in option_fields(cls, surface="cli") if f.name not in skip]


def config_options(cls: type, *, flags: Mapping[str, tuple[str, ...]] | None = None, skip: Iterable[str] = (),
                   into: str = "options") -> Callable[[Callable], Callable]:
    """Give a command one option per CLI field of ``cls``; the ones given reach it as a dict in ``into``."""

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != into]
        taken = {p.name for p in own}
        derived = [(p, c) for p, c in derived_parameters(cls, flags=flags, skip=skip) if p.name not in taken]
        converters = {p.name: c for p, c in derived}
        head = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name not in _TAIL]
        tail = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name in _TAIL]
        params = [*head, *(p for p, _ in derived), *tail]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            given = {}
            for name, convert in converters.items():
                value = kwargs.pop(name)
                if value is not None:
                    given[name] = convert(value) if convert is not None else value
            return fn(**kwargs, **{into: given})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
