"""Your own architecture: ``--arch module.path:ClassName`` with ``--arch-args JSON``.

Naming a class imports the user's module (their code runs: they asked for it by name, on the command line). The
weights still come from a state dict or an edgetl checkpoint read with ``torch.load(weights_only=True)``, and a
checkpoint that records a user architecture never imports it by itself: the user names it again with ``--arch``.

Example::

    is_user_arch("mypkg.nets:TinyDet")                    # True; "resnet18" is a zoo name
    model = build_user_arch("mypkg.nets:TinyDet", parse_arch_args('{"width": 16}'))
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

from edgetl.errors import ConfigError, ModelError

__all__ = ["build_user_arch", "is_user_arch", "module_contract", "parse_arch_args"]

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_user_arch(name: str | None) -> bool:
    """Whether ``name`` is ``module.path:ClassName`` (a zoo name has no colon)."""
    return name is not None and ":" in str(name)


def parse_arch_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--arch-args '{"width": 16}'`` -> ``{"width": 16}``; bad JSON or a non-object is one ConfigError line."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--arch-args {text!r} is not valid JSON ({e.msg} at character {e.pos}); give an object, "
                          "e.g. --arch-args '{\"width\": 16}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--arch-args must be a JSON object of constructor arguments, got {type(value).__name__}: "
                          f"{text!r}")
    return value


def _import_class(spec: str):
    if not _SPEC.match(spec):
        raise ConfigError(f"--arch {spec!r}: write module.path:ClassName (e.g. mypkg.nets:TinyDet), or a zoo name "
                          "(see `edgetl models`)")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--arch {spec}: cannot import module {module_name!r} ({e}); put it on PYTHONPATH or "
                          "install its package") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"--arch {spec}: importing {module_name!r} failed ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            from edgetl.errors import UnknownNameError

            names = [n for n, v in vars(obj).items() if inspect.isclass(v) and not n.startswith("_")]
            raise UnknownNameError(f"class in {module_name}", part, names, hint=f"(in --arch {spec})")
        obj = getattr(obj, part)
    return obj


def build_user_arch(spec: str, args: Mapping[str, Any] | None = None):
    """Import ``module:Class`` and build it with ``args`` (eval mode); it must be a ``torch.nn.Module``."""
    import torch

    cls = _import_class(spec)
    if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
        raise ConfigError(f"--arch {spec}: {type(cls).__name__} {spec.partition(':')[2]!r} is not an nn.Module class")
    kwargs = dict(args or {})
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"--arch-args {json.dumps(kwargs)} do not fit {spec}{inspect.signature(cls)}: {e}") from None
    try:
        model = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor
        raise ModelError(f"--arch {spec}: building it with {json.dumps(kwargs)} failed ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    return model.eval()


def module_contract(model):
    """What a module's ``forward`` says before it has run: one input per required positional parameter, named
    as the code names them, shapes unknown (``--input NAME:SHAPE`` completes them)."""
    from edgetl.contract import InputTensor, ModelContract

    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return ModelContract(inputs=tuple(InputTensor(name=p.name) for p in params), fixed=False, source="module")
