"""Complete a file's contract with the user's flags (:func:`merge`), refuse contradictions (:func:`check`) and
name the facts still missing (:func:`require`). Every refusal is one line naming the flag and what is valid.

Example::

    contract = merge(read_contract("vad.onnx"), parse_flags(inputs=["sr:scalar:int64"]))
    require(contract, concrete=True)    # "input 'state' has symbolic dims ...; give --opt-shape state:2x1x128"
"""

from __future__ import annotations

import dataclasses

from edgetl.contract import (
    _TASK_ROLE,
    ANY,
    ContractFlags,
    InputTensor,
    ModelContract,
    OutputTensor,
    Role,
    ShapeFlag,
    format_shape,
)
from edgetl.errors import ConfigError, UnknownNameError

__all__ = ["check", "merge", "require", "resolve_outputs"]


def _resolve_input_name(flag: ShapeFlag, file: ModelContract) -> str:
    names = file.input_names
    if flag.name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            return "input"
        raise ConfigError(f"{flag.flag} {flag.text}: the model has {len(names)} inputs ({', '.join(names)}); "
                          f"name the one you mean: {flag.flag} NAME:{format_shape(flag.shape)}")
    if names and flag.name not in names:
        raise UnknownNameError("input", flag.name, names, hint=f"(in {flag.flag} {flag.text})")
    return flag.name


def resolve_outputs(selection: tuple[str, ...], outputs: tuple[OutputTensor, ...]) -> tuple[str, ...]:
    """``--output`` items to output names: a name, or an index into the model's outputs."""
    names = tuple(o.name for o in outputs)
    resolved = []
    for item in selection:
        if item in names:
            resolved.append(item)
        elif item.isdigit() and names:
            i = int(item)
            if i >= len(names):
                raise ConfigError(f"--output {item}: the model has {len(names)} outputs (indices 0..{len(names) - 1}:"
                                  f" {', '.join(names)})")
            resolved.append(names[i])
        else:
            raise UnknownNameError("output", item, names, hint="(in --output; an index such as 0 also works)")
    return tuple(resolved)


def _merge_input(base: InputTensor, flags: ContractFlags, file: ModelContract) -> InputTensor:
    changes: dict = {}
    for f in flags.inputs:
        if _resolve_input_name(f, file) == base.name:
            shape = f.shape
            if base.shape is not None and len(base.shape) == len(shape):
                # "?" in the flag keeps the file's symbol; anything else the user wrote wins
                shape = tuple(b if (d == ANY and not isinstance(b, int)) else d for d, b in zip(shape, base.shape, strict=False))
            changes["shape"] = shape
            if f.dtype is not None:
                changes["dtype"] = f.dtype
            for attr in ("min_shape", "opt_shape", "max_shape"):  # the file's profiles, where the new shape fixes
                old = getattr(base, attr)                          # them otherwise, give way (bounds are checked)
                if old is not None and (len(old) != len(shape) or any(
                        isinstance(d, int) and p is not None and p != d for p, d in zip(old, shape, strict=True))):
                    changes[attr] = None
    for attr, items in (("min_shape", flags.min_shapes), ("opt_shape", flags.opt_shapes),
                        ("max_shape", flags.max_shapes)):
        for f in items:
            if _resolve_input_name(f, file) == base.name:
                changes[attr] = tuple(int(d) for d in f.shape)
    return dataclasses.replace(base, **changes) if changes else base


def _default_role(out: OutputTensor) -> Role:
    """An output literally named after a role (``boxes``, ``scores``, ``state``) has that role."""
    try:
        return Role.parse(out.name)
    except ConfigError:
        return out.role


def _merge_outputs(file: ModelContract, flags: ContractFlags) -> tuple[tuple[OutputTensor, ...], tuple[str, ...]]:
    outputs = list(file.outputs)
    if not outputs and flags.outputs:  # a file that does not say its outputs: the user's names stand
        outputs = [OutputTensor(name=n) for n in flags.outputs if not n.isdigit()]
    by_name = {o.name: i for i, o in enumerate(outputs)}
    for i, o in enumerate(outputs):
        if o.role == Role.OTHER:
            outputs[i] = dataclasses.replace(o, role=_default_role(o))
    for r in flags.roles:
        target = resolve_outputs((r.output,), tuple(outputs))[0] if outputs else r.output
        if target not in by_name:
            raise UnknownNameError("output", r.output, by_name, hint="(in --role)")
        o = outputs[by_name[target]]
        outputs[by_name[target]] = dataclasses.replace(o, role=r.role, layout=r.layout or o.layout,
                                                       box_format=r.box_format or o.box_format)
    selected = resolve_outputs(flags.outputs, tuple(outputs)) if flags.outputs else file.selected
    return tuple(outputs), selected


def merge(file_contract: ModelContract, flags: ContractFlags, *, check_file: bool = True) -> ModelContract:
    """The file's contract completed (or overridden) by the user's flags, then :func:`check`-ed against it."""
    inputs = list(file_contract.inputs)
    known = set(file_contract.input_names)
    for f in flags.inputs:  # inputs the file did not list (a contract built from flags alone)
        name = _resolve_input_name(f, file_contract)
        if name not in known:
            inputs.append(InputTensor(name=name))
            known.add(name)
    inputs = [_merge_input(t, flags, file_contract) for t in inputs]
    outputs, selected = _merge_outputs(file_contract, flags)
    task = flags.task or file_contract.task
    role = _TASK_ROLE.get(task)
    chosen = [o for o in outputs if (o.name in selected if selected else o.role != Role.STATE)]
    if role is not None and len(chosen) == 1 and chosen[0].role == Role.OTHER:
        outputs = tuple(dataclasses.replace(o, role=role) if o.name == chosen[0].name else o for o in outputs)
    merged = ModelContract(inputs=tuple(inputs), outputs=outputs, task=task, selected=selected,
                           fixed=file_contract.fixed, source=file_contract.source)
    if check_file:
        check(merged, file_contract, flags=flags)
    return merged


def _flag_text(name: str, flags: ContractFlags | None, attr: str = "inputs") -> str:
    for f in getattr(flags, attr, ()) if flags else ():
        if f.name in (name, None):
            return f"{f.flag} {f.text}"
    return f"--input {name}:..."


def _check_dims(where: str, shape, base: InputTensor) -> None:
    file_shape = base.shape
    if len(shape) != len(file_shape):
        raise ConfigError(f"{where}: rank {len(shape)} but the model's input is {format_shape(file_shape)} "
                          f"(rank {len(file_shape)})")
    for axis, (d, b) in enumerate(zip(shape, file_shape, strict=True)):
        if isinstance(b, int) and d != b:
            what = f"is {d}" if isinstance(d, int) else f"is dynamic ({d})"
            raise ConfigError(f"{where}: dim {axis} {what} but the model fixes it at {b} "
                              f"(the model's input is {format_shape(file_shape)})")
        lo = base.min_shape[axis] if base.min_shape else None
        hi = base.max_shape[axis] if base.max_shape else None
        if isinstance(d, int) and ((lo is not None and d < lo) or (hi is not None and d > hi)):
            raise ConfigError(f"{where}: dim {axis} is {d} but the model accepts {lo or 1}..{hi if hi else ''} there")


def _check_profiles(t: InputTensor, flags: ContractFlags | None) -> None:
    profiles = [(a, getattr(t, a)) for a in ("min_shape", "opt_shape", "max_shape") if getattr(t, a) is not None]
    for attr, shape in profiles:
        where = _flag_text(t.name, flags, attr.replace("_shape", "_shapes"))
        if t.shape is not None:
            if len(shape) != len(t.shape):
                raise ConfigError(f"{where}: rank {len(shape)} but input {t.name!r} is {format_shape(t.shape)}")
            for axis, (p, d) in enumerate(zip(shape, t.shape, strict=False)):
                if isinstance(d, int) and p is not None and p != d:
                    raise ConfigError(f"{where}: dim {axis} is {p} but input {t.name!r} fixes it at {d}")
    lo, opt, hi = t.min_shape, t.opt_shape, t.max_shape
    for a, b, names in ((lo, opt, "min <= opt"), (opt, hi, "opt <= max"), (lo, hi, "min <= max")):
        if a is not None and b is not None and len(a) == len(b):
            if any(x is not None and y is not None and x > y for x, y in zip(a, b, strict=False)):
                raise ConfigError(f"input {t.name!r}: profile shapes must satisfy {names} per dim, got "
                                  f"min {lo}, opt {opt}, max {hi} (--min-shape/--opt-shape/--max-shape)")


def _check_symbols(contract: ModelContract) -> None:
    """A symbol shared by inputs (``N``) must get one size in the opt shapes."""
    seen: dict[str, tuple[int, str]] = {}
    for t in contract.inputs:
        if t.shape is None or t.opt_shape is None or len(t.opt_shape) != len(t.shape):
            continue
        for d, v in zip(t.shape, t.opt_shape, strict=False):
            if isinstance(d, str) and d != ANY:
                if d in seen and seen[d][0] != v:
                    raise ConfigError(f"--opt-shape: dim {d!r} is {seen[d][0]} in {seen[d][1]!r} but {v} in "
                                      f"{t.name!r}; one symbol is one size")
                seen.setdefault(d, (v, t.name))


def check(contract: ModelContract, file_contract: ModelContract, *, flags: ContractFlags | None = None) -> None:
    """Refuse a contract that contradicts the file: unknown input names, wrong rank, a fixed dim or dtype changed,
    inconsistent profiles. Missing facts are :func:`require`'s business."""
    file_inputs = {t.name: t for t in file_contract.inputs}
    for t in contract.inputs:
        where = _flag_text(t.name, flags)
        if file_inputs and t.name not in file_inputs:
            raise UnknownNameError("input", t.name, file_inputs, hint=f"(in {where})")
        base = file_inputs.get(t.name)
        if base is not None and base.shape is not None and t.shape is not None:
            if file_contract.fixed:  # shapes only observed on example inputs constrain nothing
                _check_dims(where, t.shape, base)
        if base is not None and file_contract.fixed and base.dtype and t.dtype and base.dtype != t.dtype:
            raise ConfigError(f"{where}: dtype {t.dtype} but the model's input {t.name!r} is {base.dtype}")
        _check_profiles(t, flags)
    missing = [n for n in file_inputs if n not in contract.input_names]
    if missing:
        raise ConfigError(f"the contract lacks the model's input(s) {', '.join(missing)}; the model needs all of "
                          f"{', '.join(file_inputs)}")
    _check_symbols(contract)


def require(contract: ModelContract, *, shapes: bool = True, dtypes: bool = False, concrete: bool = False) -> None:
    """Raise for the first missing fact a stage needs, naming the flag that supplies it (nothing is guessed)."""
    if not contract.inputs:
        raise ConfigError("the model's inputs are not known from the file; give each with --input NAME:SHAPE[:DTYPE]")
    for t in contract.inputs:
        if shapes and t.shape is None:
            raise ConfigError(f"the shape of input {t.name!r} is not known from the file; give it with "
                              f"--input {t.name}:SHAPE (e.g. --input {t.name}:1x3x224x224)")
        if dtypes and t.dtype is None:
            raise ConfigError(f"the dtype of input {t.name!r} is not known from the file; give it with "
                              f"--input {t.name}:{format_shape(t.shape) if t.shape is not None else 'SHAPE'}:float32 "
                              "(or the model's dtype)")
        if concrete and t.concrete_shape() is None:
            raise ConfigError(f"input {t.name!r} is {format_shape(t.shape)} with dynamic dims; give the size to use "
                              f"with --opt-shape {t.name}:"
                              + "x".join(str(d) if isinstance(d, int) else "SIZE" for d in (t.shape or ())))
