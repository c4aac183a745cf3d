"""The model contract: what a model takes and what it gives back, for any model and any task.

A :class:`ModelContract` names every input (shape with symbolic dims such as ``N``, ``H``, ``W``; dtype; value
range and preprocessing) and every output (shape, a :class:`Role` such as logits or boxes, an axis layout such
as time-major ``T,N,C``), plus the :class:`Task`. It is read from what a file carries
(:mod:`edgetl.contract_read`), completed or overridden by the user's flags (:func:`parse_flags`, :func:`merge`),
checked against the file (:func:`check`), and turned into each exporter's dynamic-shape spec
(:mod:`edgetl.contract_shapes`). It is plain data: ``to_dict``/``from_dict`` round-trip through JSON, so it goes
into every export's metadata.

Example::

    file_c = read_contract("det.onnx")                       # image: [N, 3, H, W] float32
    flags = parse_flags(inputs=["image:1x3xHxW"], opt_shapes=["image:1x3x640x640"], task="detection")
    contract = merge(file_c, flags)                            # one-line ConfigError on a contradiction
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from edgetl.choice import Choice
from edgetl.errors import ConfigError, UnknownNameError

__all__ = [
    "ANY",
    "ContractFlags",
    "Dim",
    "InputTensor",
    "ModelContract",
    "OutputTensor",
    "Role",
    "Task",
    "check",
    "format_shape",
    "merge",
    "normalize_dtype",
    "parse_flags",
    "parse_input_flag",
    "parse_output_flag",
    "parse_shape",
    "parse_shape_flag",
]

Dim = Union[int, str]  # a fixed size, a symbolic name ("N", "H", "s40") or ANY for an unnamed dynamic size
ANY = "?"
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^\?$")


class Task(Choice):
    """What the model's outputs mean; decides which fidelity metrics apply."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    SEQUENCE = "sequence"
    EMBEDDING = "embedding"
    GENERIC = "generic"


class Role(Choice):
    """What one output holds."""

    LOGITS = "logits"
    BOXES = "boxes"
    SCORES = "scores"
    MASK = "mask"
    SEQUENCE = "sequence"
    EMBEDDING = "embedding"
    STATE = "state"
    OTHER = "other"


# The role a task gives its only (or only selected) output when nothing else says; detection needs two roles
# and is never filled in this way.
_TASK_ROLE = {Task.CLASSIFICATION: Role.LOGITS, Task.SEGMENTATION: Role.MASK, Task.SEQUENCE: Role.SEQUENCE,
              Task.EMBEDDING: Role.EMBEDDING}

_DTYPES = {
    "float32": ("float32", "f32", "fp32", "float", "tensor(float)"), "float16": ("float16", "f16", "fp16", "half"),
    "bfloat16": ("bfloat16", "bf16"), "float64": ("float64", "f64", "fp64", "double"),
    "int8": ("int8", "i8", "s8"), "uint8": ("uint8", "u8"), "int16": ("int16", "i16"), "int32": ("int32", "i32"),
    "int64": ("int64", "i64", "long"), "bool": ("bool", "boolean"),
}
_DTYPE_ALIASES = {alias: name for name, aliases in _DTYPES.items() for alias in aliases}


def normalize_dtype(text: str | None, *, flag: str = "--input") -> str | None:
    """``"fp16"`` -> ``"float16"``; an unknown dtype is an error naming ``flag``."""
    if text is None:
        return None
    key = str(text).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise UnknownNameError("dtype", key, _DTYPES, hint=f"(in {flag})")
    return _DTYPE_ALIASES[key]


def _is_dtype(text: str) -> bool:
    return text.strip().lower().removeprefix("torch.") in _DTYPE_ALIASES


def parse_shape(text: str, *, flag: str = "--input") -> tuple[Dim, ...]:
    """``"1x3xHxW"``, ``"1,3,H,W"``, ``"[N,3,?,?]"`` or ``"scalar"`` -> ``(1, 3, "H", "W")``; -1 means ``?``."""
    raw = str(text).strip().strip("[]()")
    if raw.lower() in ("scalar", ""):
        if str(text).strip().lower() in ("scalar", "()", "[]"):
            return ()
        raise ConfigError(f"{flag}: empty shape; write it as 1x3x48x48 (or 'scalar' for a 0-d input)")
    parts = raw.split(",") if "," in raw else raw.split("x")
    dims: list[Dim] = []
    for part in (p.strip() for p in parts):
        if re.fullmatch(r"\d+", part):
            if int(part) < 1:
                raise ConfigError(f"{flag}: shape {text!r} has a size {part}; sizes are positive or symbolic (N, H, ?)")
            dims.append(int(part))
        elif part in ("-1", ANY):
            dims.append(ANY)
        elif _SYMBOL.match(part):
            dims.append(part)
        else:
            raise ConfigError(f"{flag}: cannot read shape {text!r} (part {part!r}); write sizes or symbols "
                              "separated by 'x' or ',', e.g. 1x3xHxW or N,3,480,640")
    return tuple(dims)


def format_shape(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "unknown"
    return "x".join(str(d) for d in shape) if shape else "scalar"


@dataclass(frozen=True)
class InputTensor:
    """One named input. ``shape`` None means the rank is unknown; ``min/opt/max_shape`` are concrete profiles
    (``None`` entries in min/max where a dim is unbounded). ``mean``/``std`` describe the preprocessing that
    maps raw values (after scaling to ``value_range``) to what the model takes."""

    name: str
    shape: tuple[Dim, ...] | None = None
    dtype: str | None = None
    value_range: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    min_shape: tuple[int | None, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("shape", "min_shape", "opt_shape", "max_shape", "mean", "std", "value_range"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(v))
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        for d in self.shape or ():
            if not (isinstance(d, str) or (isinstance(d, int) and d >= 1)):
                raise ConfigError(f"input {self.name!r}: shape {self.shape} has {d!r}; a dim is a positive size or a "
                                  "symbol (N, H, ?)")
        if self.value_range is not None and (len(self.value_range) != 2 or not self.value_range[0] < self.value_range[1]):
            raise ConfigError(f"input {self.name!r}: value range {self.value_range} must be (low, high) with low < high")
        if self.std is not None and any(float(s) <= 0 for s in self.std):
            raise ConfigError(f"input {self.name!r}: std values must be positive, got {self.std}")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def concrete_shape(self) -> tuple[int, ...] | None:
        """The shape to build an example with: the static shape, else the opt shape, else None."""
        if self.is_static:
            return tuple(int(d) for d in self.shape)  # type: ignore[union-attr]
        return self.opt_shape


@dataclass(frozen=True)
class OutputTensor:
    """One named output; ``layout`` names its axes (``"N,C"``, ``"T,N,C"``, ``"N,A,4"``); ``box_format`` is
    ``xyxy``/``xywh``/``cxcywh`` for boxes."""

    name: str
    shape: tuple[Dim, ...] | None = None
    dtype: str | None = None
    role: Role = Role.OTHER
    layout: str | None = None
    box_format: str | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "role", Role.parse(self.role))
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype, flag="--output"))
        if self.box_format is not None and self.box_format not in ("xyxy", "xywh", "cxcywh"):
            raise UnknownNameError("box format", self.box_format, ("xyxy", "xywh", "cxcywh"), hint="(in --role)")

    def axis(self, letter: str, default: int | None = None) -> int | None:
        """The index of axis ``letter`` in ``layout`` (``"T,N,C"``.axis("N") == 1)."""
        if not self.layout:
            return default
        axes = [a.strip() for a in self.layout.split(",")]
        return axes.index(letter) if letter in axes else default


@dataclass(frozen=True)
class ModelContract:
    """Inputs, outputs and task of a model. ``fixed`` is True when the shapes come from a file that fixes them
    (ONNX, OpenVINO, .pt2), False when they were only observed (an ``nn.Module`` run on example inputs).
    ``selected`` are the outputs a metric looks at (empty: every output but ``state``)."""

    inputs: tuple[InputTensor, ...]
    outputs: tuple[OutputTensor, ...] = ()
    task: Task = Task.GENERIC
    selected: tuple[str, ...] = ()
    fixed: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "task", Task.parse(self.task))
        object.__setattr__(self, "selected", tuple(self.selected))
        for kind, items in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"the model contract names two {kind}s alike: {names}")
        if self.outputs:
            valid = self.output_names
            for s in self.selected:
                if s not in valid:
                    raise UnknownNameError("output", s, valid, hint="(in --output)")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> InputTensor:
        for t in self.inputs:
            if t.name == name:
                return t
        raise UnknownNameError("input", name, self.input_names, hint="(in --input)")

    def output(self, name: str) -> OutputTensor:
        for t in self.outputs:
            if t.name == name:
                return t
        raise UnknownNameError("output", name, self.output_names, hint="(in --output)")

    def metric_outputs(self) -> tuple[OutputTensor, ...]:
        """The outputs a metric compares: the selected ones, else all but recurrent state."""
        if self.selected:
            return tuple(self.output(n) for n in self.selected)
        return tuple(o for o in self.outputs if o.role != Role.STATE) or self.outputs

    def with_role(self, role: Role | str) -> tuple[OutputTensor, ...]:
        role = Role.parse(role)
        return tuple(o for o in self.metric_outputs() if o.role == role)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Choice):
                return v.value
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {
            "inputs": [{k: plain(v) for k, v in dataclasses.asdict(t).items() if v is not None} for t in self.inputs],
            "outputs": [{k: plain(v) for k, v in dataclasses.asdict(t).items() if v is not None}
                        for t in self.outputs],
            "task": self.task.value, "selected": list(self.selected), "fixed": self.fixed, "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelContract:
        from edgetl.errors import check_names

        check_names(d, [f.name for f in dataclasses.fields(cls)], "model contract key")
        ins, outs = [], []
        for item, kind, into in [(i, InputTensor, ins) for i in d.get("inputs", ())] + \
                [(o, OutputTensor, outs) for o in d.get("outputs", ())]:
            check_names(item, [f.name for f in dataclasses.fields(kind)], f"{kind.__name__} key")
            into.append(kind(**item))
        return cls(inputs=tuple(ins), outputs=tuple(outs), task=d.get("task", "generic"),
                   selected=tuple(d.get("selected", ())), fixed=bool(d.get("fixed", True)), source=d.get("source", ""))


# --------------------------------------------------------------------------- the user's flags
@dataclass(frozen=True)
class ShapeFlag:
    """One ``--input``/``--opt-shape``/``--min-shape``/``--max-shape`` value; ``name`` None when left out."""

    name: str | None
    shape: tuple[Dim, ...]
    dtype: str | None = None
    flag: str = "--input"
    text: str = ""


@dataclass(frozen=True)
class RoleFlag:
    """One ``--role NAME:ROLE[:LAYOUT[:BOXFORMAT]]`` value (``scores:scores``, ``out:sequence:T,N,C``)."""

    output: str
    role: Role
    layout: str | None = None
    box_format: str | None = None


@dataclass(frozen=True)
class ContractFlags:
    """Everything the user said about the contract on the command line or in a recipe."""

    inputs: tuple[ShapeFlag, ...] = ()
    min_shapes: tuple[ShapeFlag, ...] = ()
    opt_shapes: tuple[ShapeFlag, ...] = ()
    max_shapes: tuple[ShapeFlag, ...] = ()
    outputs: tuple[str, ...] = ()
    roles: tuple[RoleFlag, ...] = ()
    task: Task | None = None


def parse_shape_flag(text: str, *, flag: str = "--input", allow_dtype: bool = True) -> ShapeFlag:
    """``NAME:SHAPE[:DTYPE]`` or ``SHAPE[:DTYPE]``; names may themselves hold ``:`` (``input_1:0:1x3x8x8``)."""
    parts = str(text).strip().split(":")
    dtype = None
    if allow_dtype and len(parts) >= 2 and _is_dtype(parts[-1]):
        dtype = normalize_dtype(parts.pop(), flag=flag)
    shape = parse_shape(parts.pop(), flag=f"{flag} {text}")
    name = ":".join(parts) or None
    if not allow_dtype and len(shape) and any(not isinstance(d, int) for d in shape):
        raise ConfigError(f"{flag} {text}: a profile shape must be concrete sizes, e.g. image:1x3x640x640")
    return ShapeFlag(name=name, shape=shape, dtype=dtype, flag=flag, text=str(text))


def parse_input_flag(text: str) -> ShapeFlag:
    return parse_shape_flag(text, flag="--input")


def parse_output_flag(texts: str | Iterable[str]) -> tuple[str, ...]:
    """``--output boxes,scores`` (repeatable) -> ``("boxes", "scores")``; integers select by index."""
    items = [texts] if isinstance(texts, str) else list(texts)
    names = tuple(n.strip() for t in items for n in str(t).split(",") if n.strip())
    if items and not names:
        raise ConfigError("--output: no output named; write --output NAME[,NAME] or an index such as --output 0")
    return names


def parse_role_flag(text: str) -> RoleFlag:
    parts = str(text).split(":")
    if len(parts) < 2:
        raise ConfigError(f"--role {text}: write NAME:ROLE[:LAYOUT[:BOXFORMAT]], e.g. --role out:sequence:T,N,C; "
                          f"roles: {', '.join(r.value for r in Role)}")
    return RoleFlag(output=parts[0], role=Role.parse(parts[1]), layout=parts[2] if len(parts) > 2 and parts[2] else None,
                    box_format=parts[3] if len(parts) > 3 else None)


def parse_flags(*, inputs: Iterable[str] = (), min_shapes: Iterable[str] = (), opt_shapes: Iterable[str] = (),
                max_shapes: Iterable[str] = (), outputs: Iterable[str] = (), roles: Iterable[str] = (),
                task: str | None = None) -> ContractFlags:
    """The CLI's contract flags, parsed (every error is one line naming its flag). An input named twice in one
    flag is an error, not "the last one wins"."""
    flags = ContractFlags(
        inputs=tuple(parse_shape_flag(t, flag="--input") for t in inputs),
        min_shapes=tuple(parse_shape_flag(t, flag="--min-shape", allow_dtype=False) for t in min_shapes),
        opt_shapes=tuple(parse_shape_flag(t, flag="--opt-shape", allow_dtype=False) for t in opt_shapes),
        max_shapes=tuple(parse_shape_flag(t, flag="--max-shape", allow_dtype=False) for t in max_shapes),
        outputs=parse_output_flag(list(outputs)) if list(outputs) else (),
        roles=tuple(parse_role_flag(t) for t in roles),
        task=Task.parse(task) if task is not None else None,
    )
    for flag, given in (("--input", flags.inputs), ("--min-shape", flags.min_shapes),
                        ("--opt-shape", flags.opt_shapes), ("--max-shape", flags.max_shapes)):
        names = [f.name for f in given]
        twice = sorted({n or "(unnamed)" for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{flag} gives input {', '.join(twice)} more than once; give each input once")
    return flags


from edgetl.contract_merge import check, merge  # noqa: E402  (merge/check live beside; one import path for users)
