"""ExecuTorch export of any model by its contract: every input by name, dynamic dims bounded by the contract.

ExecuTorch plans memory ahead of time for the largest shape, so every dynamic dim needs an upper bound
(``--max-shape``, or a bounded dim in the source program): :func:`edgetl.contract_shapes.executorch_upper_bounds`
refuses in one line without one. Each symbol becomes one ``torch.export.Dim(name, min=, max=)`` shared by the
inputs that use it (:func:`edgetl.contract_shapes.dynamic_dim_ranges`); a symbol whose min equals its max is a
fixed size. The program is traced at the ``--opt-shape`` sizes (at least 2 on a dynamic dim: torch.export
specialises a size of 1), lowered to XNNPACK like the classifier path, and the ``.pte``'s recorded contract carries
the bounds, so ``edgetl eval``/``bench`` refuse a shape past them in one line before running.

Example::

    art = with_contract(load_model("seg.pth", arch="mypkg:SegNet"),
                        parse_flags(inputs=["image:1x1xHxW:float32"], opt_shapes=["image:1x1x28x28"],
                                    max_shapes=["image:1x1x64x64"]))
    pte = export_by_contract(art, Path("out/seg.pte"))   # H, W in 1..64
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.contract import ModelContract

__all__ = ["bounded_contract", "export_by_contract", "trace_plan"]


def trace_plan(contract: ModelContract) -> tuple[dict[str, tuple[int, ...]], dict[str, dict[int, Any] | None],
                                                 dict[str, tuple[int, int]]]:
    """(the shape each input is traced at, ``torch.export`` dynamic shapes by input, the range of each dynamic
    symbol). Every dynamic dim must be bounded above (one ConfigError line naming ``--max-shape``)."""
    from torch.export import Dim

    from edgetl.contract_shapes import _symbol, dynamic_dim_ranges, executorch_upper_bounds

    executorch_upper_bounds(contract)  # every dim bounded, or one line naming --max-shape
    ranges = {k: (lo, int(hi)) for k, (lo, hi) in dynamic_dim_ranges(contract).items() if hi is not None}
    dims = {k: Dim(k, min=lo, max=hi) for k, (lo, hi) in ranges.items() if hi > lo}
    shapes: dict[str, tuple[int, ...]] = {}
    dynamic: dict[str, dict[int, Any] | None] = {}
    for t in contract.inputs:
        shape, dyn = [], {}
        for axis, d in enumerate(t.shape or ()):
            if isinstance(d, int):
                shape.append(d)
                continue
            sym = _symbol(t.name, axis, d)
            lo, hi = ranges[sym]
            opt = t.opt_shape[axis] if t.opt_shape and len(t.opt_shape) > axis else None
            size = opt if opt is not None else lo
            if sym in dims:
                dyn[axis] = dims[sym]
                size = min(max(size, 2, lo), hi)  # torch.export fixes a traced size of 1
            shape.append(int(size))
        shapes[t.name], dynamic[t.name] = tuple(shape), dyn or None
    return shapes, dynamic, {k: v for k, v in ranges.items() if k in dims}


def bounded_contract(contract: ModelContract, program: Any = None) -> ModelContract:
    """``contract`` with each input's min/max shape set from the bounds the program was exported with, and (given
    the exported ``program``) each output's dims as the program computes them: a dim that follows an input's
    symbol (a mask's H x W) is named after it, any other dynamic dim is ``?``."""
    from edgetl.contract_shapes import _symbol, dynamic_dim_ranges

    ranges = dynamic_dim_ranges(contract)
    ins = []
    for t in contract.inputs:
        lo = tuple(d if isinstance(d, int) else ranges[_symbol(t.name, a, d)][0] for a, d in enumerate(t.shape))
        hi = tuple(d if isinstance(d, int) else ranges[_symbol(t.name, a, d)][1] for a, d in enumerate(t.shape))
        ins.append(dataclasses.replace(t, min_shape=lo, max_shape=hi))
    outs = contract.outputs
    shapes = _output_shapes(program, contract) if program is not None else None
    if shapes is not None and len(shapes) == len(outs):
        outs = tuple(dataclasses.replace(o, shape=s) for o, s in zip(outs, shapes, strict=True))
    return dataclasses.replace(contract, inputs=tuple(ins), outputs=outs)


def _output_shapes(program: Any, contract: ModelContract) -> list[tuple] | None:
    """The user outputs' shapes of an exported program in the contract's dim names (None if unreadable)."""
    import torch

    sig = program.graph_signature
    nodes = list(program.graph.nodes)
    user = [n for n in nodes if n.op == "placeholder" and n.name in sig.user_inputs]
    names: dict[Any, str] = {}
    for n, t in zip(user, contract.inputs, strict=False):
        for d, named in zip(n.meta["val"].shape, t.shape or (), strict=False):
            if isinstance(d, torch.SymInt) and isinstance(named, str):
                names.setdefault(d.node.expr, named)
    out = next(n for n in nodes if n.op == "output")
    shapes = []
    for a in out.args[0]:
        val = getattr(a, "meta", {}).get("val")
        if val is None or not hasattr(val, "shape"):
            return None
        shapes.append(tuple(int(d) if not isinstance(d, torch.SymInt) else names.get(d.node.expr, "?")
                            for d in val.shape))
    return shapes


def _examples(contract: ModelContract, shapes: dict[str, tuple[int, ...]]) -> tuple:
    """Example inputs at the trace shapes (float: seeded normal; an integer input only from a fixed value range,
    as :func:`edgetl.contract_shapes.example_inputs` allows)."""
    import torch

    from edgetl.contract_shapes import example_inputs

    fixed = dataclasses.replace(contract, inputs=tuple(
        dataclasses.replace(t, shape=shapes[t.name], opt_shape=shapes[t.name], min_shape=None, max_shape=None)
        for t in contract.inputs))
    feed = example_inputs(fixed)
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in contract.input_names)


def export_by_contract(artifact: Artifact, path: Path) -> Artifact:
    """Lower ``artifact`` (a PyTorch model with a completed contract) to ``path`` (``.pte``), bounded as above."""
    from exporters.executorch import capture, lower_to_pte

    start = time.perf_counter()
    contract = artifact.contract
    shapes, dynamic, ranges = trace_plan(contract)
    example = _examples(contract, shapes)
    dyn = tuple(dynamic[n] for n in contract.input_names) if any(dynamic.values()) else None
    program = capture(artifact.model.eval(), artifact, example, dynamic_shapes=dyn)
    lowered = lower_to_pte(program, path)
    bounds = {k: list(v) for k, v in ranges.items()}
    record = StageRecord(stage="export", options={"format": "executorch", "precision": "fp32", "backend": "xnnpack",
                                                  "by_contract": True, "dynamic_dims": bounds},
                         seconds=time.perf_counter() - start)
    first = contract.inputs[0]
    batch_dynamic = bool(dynamic[first.name]) and 0 in (dynamic[first.name] or {})
    extra: dict[str, Any] = {"precision": "fp32", "dynamic_batch": batch_dynamic, "dynamic_dims": bounds,
                             "traced_shapes": {k: list(v) for k, v in shapes.items()},
                             "executorch": lowered["executorch"],
                             "executorch_non_delegated_ops": lowered["non_delegated_ops"],
                             "executorch_delegated_ops": lowered["delegated_ops"]}
    return artifact.with_stage(record, path=path, format=Format.EXECUTORCH, extra=extra,
                               contract=bounded_contract(contract, program))
