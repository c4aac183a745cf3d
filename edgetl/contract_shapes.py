"""What each exporter and runtime needs from a contract, as plain data: example inputs, ONNX ``dynamic_axes``,
``torch.export`` dynamic shapes, OpenVINO partial shapes, TensorRT min/opt/max profiles, ExecuTorch upper
bounds. Each is a pure function of the contract; a missing fact is a one-line error naming the flag.

Example::

    contract_shapes.onnx_dynamic_axes(c)       # {"image": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", ...}}
    contract_shapes.tensorrt_profiles(c)       # {"min": {"image": (1, 3, 32, 32)}, "opt": {...}, "max": {...}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgetl.contract import ANY, InputTensor, ModelContract, format_shape
from edgetl.contract_merge import require
from edgetl.errors import ConfigError, DataError

__all__ = ["check_runs", "dynamic_dim_ranges", "example_inputs", "executorch_upper_bounds", "onnx_dynamic_axes",
           "openvino_partial_shapes", "preprocess", "check_sample", "tensorrt_profiles", "torch_dynamic_shapes", "trtexec_shape_flags"]


def _symbol(t_name: str, axis: int, d: Any) -> str:
    return f"{t_name}_dim{axis}" if d == ANY else str(d)


def check_sample(t: InputTensor, value: np.ndarray, *, origin: str = "--data") -> None:
    """A data value whose rank or fixed sizes contradict input ``t`` is refused, naming where it came from."""
    if t.shape is None:
        return
    if value.ndim != len(t.shape):
        raise DataError(f"{origin}: input {t.name!r} got shape {tuple(value.shape)} but the model takes "
                        f"{format_shape(t.shape)} (rank {len(t.shape)})")
    for axis, (v, d) in enumerate(zip(value.shape, t.shape, strict=False)):
        if isinstance(d, int) and v != d:
            raise DataError(f"{origin}: input {t.name!r} got shape {tuple(value.shape)} but dim {axis} must be {d} "
                            f"(the model takes {format_shape(t.shape)})")
        lo = t.min_shape[axis] if t.min_shape and len(t.min_shape) > axis else None
        hi = t.max_shape[axis] if t.max_shape and len(t.max_shape) > axis else None
        if (hi is not None and v > hi) or (lo is not None and v < lo):
            raise DataError(f"{origin}: input {t.name!r} got shape {tuple(value.shape)} but dim {axis} ({d}) must be "
                            f"within {lo or 1}..{hi if hi is not None else ''}, the bounds the model was exported for "
                            f"(min {format_shape(t.min_shape)}, max {format_shape(t.max_shape)}); resize the inputs, "
                            "or re-export with other --min-shape/--max-shape")


def preprocess(t: InputTensor, unit: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (pixels / 255) -> what input ``t`` takes: scaled to its value range, then
    ``(x - mean) / std`` along its channel axis (``C`` of its layout, else axis 1)."""
    x = np.asarray(unit, dtype=np.float64)
    if t.value_range is not None:
        lo, hi = t.value_range
        x = lo + x * (hi - lo)
    if t.mean is None and t.std is None:
        return x
    layout = (t.layout or "").replace(",", "").upper()
    c_axis = layout.index("C") if "C" in layout else min(1, x.ndim - 1)
    view = [1] * x.ndim
    view[c_axis] = -1
    if t.mean is not None:
        x = x - np.asarray(t.mean, np.float64).reshape(view)
    if t.std is not None:
        x = x / np.asarray(t.std, np.float64).reshape(view)
    return x


def example_inputs(contract: ModelContract, *, data: Mapping[str, Any] | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """One example per input: from ``data`` where given (real inputs), else synthetic at the concrete (or opt)
    shape: float uniform in ``value_range`` (standard normal without one). Integer and bool inputs (a sample
    rate, token ids) are never made up: they must come from ``data`` or have a ``value_range``."""
    require(contract, shapes=True)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in contract.inputs:
        if data is not None and t.name in data:
            value = np.asarray(data[t.name])
            check_sample(t, value)
            out[t.name] = value
            continue
        shape = t.concrete_shape()
        if shape is None:
            require(ModelContract(inputs=(t,), fixed=contract.fixed), concrete=True)
        if t.dtype is None:
            raise ConfigError(f"the dtype of input {t.name!r} is not known; give it with "
                              f"--input {t.name}:{format_shape(t.shape)}:float32 (or the model's dtype)")
        if t.dtype.startswith(("float", "bfloat")):
            if t.value_range is not None or t.mean is not None or t.std is not None:
                value = preprocess(t, rng.uniform(0.0, 1.0, size=shape))
            else:
                value = rng.standard_normal(size=shape)
            out[t.name] = value.astype("float32" if t.dtype == "bfloat16" else t.dtype)
        elif t.value_range is not None:
            lo, hi = int(t.value_range[0]), int(t.value_range[1])
            out[t.name] = rng.integers(lo, hi + 1, size=shape).astype(t.dtype)
        else:
            raise ConfigError(f"input {t.name!r} is {t.dtype} {format_shape(t.shape)}; its values cannot be made up "
                              f"(a sample rate, token ids): give real inputs with --data (an .npz with an array "
                              f"{t.name!r}, or module:function)")
    return out


def dynamic_dim_ranges(contract: ModelContract) -> dict[str, tuple[int, int | None]]:
    """Every symbolic input dim with its range: the tightest of the min/max shapes where it occurs (min 1)."""
    ranges: dict[str, tuple[int, int | None]] = {}
    for t in contract.inputs:
        for axis, d in enumerate(t.shape or ()):
            if isinstance(d, int):
                continue
            name = _symbol(t.name, axis, d)
            lo = (t.min_shape[axis] if t.min_shape and len(t.min_shape) > axis else None) or 1
            hi = t.max_shape[axis] if t.max_shape and len(t.max_shape) > axis else None
            old_lo, old_hi = ranges.get(name, (1, None))
            new_hi = hi if old_hi is None else (old_hi if hi is None else min(hi, old_hi))
            ranges[name] = (max(lo, old_lo), new_hi)
    for name, (lo, hi) in ranges.items():
        if hi is not None and hi < lo:
            raise ConfigError(f"dim {name!r}: its min {lo} exceeds its max {hi} across inputs "
                              "(--min-shape/--max-shape)")
    return ranges


def onnx_dynamic_axes(contract: ModelContract) -> dict[str, dict[int, str]]:
    """``torch.onnx.export(dynamic_axes=...)``: every symbolic dim of inputs and outputs, by symbol name."""
    axes: dict[str, dict[int, str]] = {}
    for t in (*contract.inputs, *contract.outputs):
        dyn = {a: _symbol(t.name, a, d) for a, d in enumerate(t.shape or ()) if not isinstance(d, int)}
        if dyn:
            axes[t.name] = dyn
    return axes


def torch_dynamic_shapes(contract: ModelContract) -> dict[str, dict[int, Any] | None]:
    """``torch.export.export(dynamic_shapes=...)`` (and the dynamo ONNX exporter): one ``Dim`` per symbol, shared
    across inputs, bounded by the contract's min/max shapes."""
    from torch.export import Dim

    dims = {name: Dim(name, min=lo, max=hi) if hi is not None else Dim(name, min=lo)
            for name, (lo, hi) in dynamic_dim_ranges(contract).items()}
    spec: dict[str, dict[int, Any] | None] = {}
    for t in contract.inputs:
        dyn = {a: dims[_symbol(t.name, a, d)] for a, d in enumerate(t.shape or ()) if not isinstance(d, int)}
        spec[t.name] = dyn or None
    return spec


def openvino_partial_shapes(contract: ModelContract) -> dict[str, str]:
    """``ov.Model.reshape`` / ``ov.convert_model(input=...)``: ``"[?,3,16..512,16..512]"`` per input."""
    ranges = dynamic_dim_ranges(contract)
    shapes = {}
    for t in contract.inputs:
        require(ModelContract(inputs=(t,), fixed=contract.fixed), shapes=True)
        parts = []
        for axis, d in enumerate(t.shape or ()):
            if isinstance(d, int):
                parts.append(str(d))
                continue
            lo, hi = ranges[_symbol(t.name, axis, d)]
            parts.append("?" if lo <= 1 and hi is None else f"{lo}..{hi if hi is not None else ''}")
        shapes[t.name] = "[" + ",".join(parts) + "]"
    return shapes


def tensorrt_profiles(contract: ModelContract) -> dict[str, dict[str, tuple[int, ...]]]:
    """One optimization profile: min/opt/max shape per input. A dynamic input needs all three
    (``--min-shape``, ``--opt-shape``, ``--max-shape``); a static one uses its shape for each."""
    prof: dict[str, dict[str, tuple[int, ...]]] = {"min": {}, "opt": {}, "max": {}}
    for t in contract.inputs:
        require(ModelContract(inputs=(t,), fixed=contract.fixed), shapes=True)
        if t.is_static:
            for k in prof:
                prof[k][t.name] = tuple(int(d) for d in t.shape)  # type: ignore[union-attr]
            continue
        for k, flag, shape in (("min", "--min-shape", t.min_shape), ("opt", "--opt-shape", t.opt_shape),
                               ("max", "--max-shape", t.max_shape)):
            if shape is None or any(s is None for s in shape):
                raise ConfigError(f"input {t.name!r} is {format_shape(t.shape)}: a TensorRT profile needs its {k} "
                                  f"shape; give {flag} {t.name}:"
                                  + "x".join(str(d) if isinstance(d, int) else "SIZE" for d in t.shape))
            prof[k][t.name] = tuple(int(s) for s in shape)
    return prof


def trtexec_shape_flags(profiles: Mapping[str, Mapping[str, tuple[int, ...]]]) -> list[str]:
    """``--minShapes=image:1x3x32x32`` etc. for ``trtexec``."""
    flags = []
    for key, opt in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        items = profiles.get(key, {})
        if items:
            flags.append(f"{opt}=" + ",".join(f"{n}:{'x'.join(str(s) for s in shape)}" for n, shape in items.items()))
    return flags


def executorch_upper_bounds(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    """The largest shape per input, which ExecuTorch's memory planning allocates for; dynamic dims need
    ``--max-shape`` (or a bounded dim in the source program)."""
    ranges = dynamic_dim_ranges(contract)
    bounds = {}
    for t in contract.inputs:
        require(ModelContract(inputs=(t,), fixed=contract.fixed), shapes=True)
        shape = []
        for axis, d in enumerate(t.shape or ()):
            hi = d if isinstance(d, int) else ranges[_symbol(t.name, axis, d)][1]
            if hi is None:
                raise ConfigError(f"input {t.name!r} is {format_shape(t.shape)}: ExecuTorch plans memory for the "
                                  f"largest shape; give --max-shape {t.name}:"
                                  + "x".join(str(x) if isinstance(x, int) else "SIZE" for x in t.shape or ()))
            shape.append(int(hi))
        bounds[t.name] = tuple(shape)
    return bounds


def check_runs(contract: ModelContract, run: Callable[[dict[str, np.ndarray]], Any], *,
               inputs: Mapping[str, Any] | None = None) -> Any:
    """Run the model once on the contract's example inputs: a shape it rejects is a one-line ConfigError naming
    the input flags, before any real work. Returns what ``run`` returned."""
    feed = example_inputs(contract, data=inputs)
    try:
        return run(feed)
    except Exception as e:  # any runtime's own error type: reworded to the flag the user controls
        shapes = ", ".join(f"{k} {format_shape(v.shape)} {v.dtype}" for k, v in feed.items())
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"the model rejects the inputs {shapes} (set by --input/--opt-shape/--data): {first}") from None
