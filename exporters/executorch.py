"""ExecuTorch export (``.pte``): ``torch.export`` then ``to_edge_transform_and_lower`` with the XNNPACK partitioner.

Operators XNNPACK does not take stay on ExecuTorch's portable kernels, which are much slower on a phone;
they are listed in the artifact (``extra["executorch_non_delegated_ops"]``) rather than hidden. A dynamic batch
is bounded (``max_batch``) because ExecuTorch plans its memory ahead of time for the largest shape.

Example::

    pte = export_executorch(art, Path("out/model.pte"), dynamic_batch=True, max_batch=8)
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ExportError, MissingDependencyError
from edgetl.fileio import atomic_path

__all__ = ["capture", "export_executorch", "exporter", "lower_to_pte"]

log = logging.getLogger(__name__)


def exporter(artifact: Artifact, out: Path, options) -> Artifact:
    """The format-table entry point (see :mod:`exporters.base`)."""
    return export_executorch(artifact, out, dynamic_batch=options.dynamic_batch, max_batch=options.max_batch)


def export_executorch(artifact: Artifact, path: str | Path, *, dynamic_batch: bool = False,
                      max_batch: int = 32) -> Artifact:
    """Lower a PyTorch artifact to an XNNPACK-delegated ExecuTorch program at ``path`` (atomic)."""
    _require()
    import torch

    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ExportError(f"ExecuTorch export needs a PyTorch model; got a {artifact.format.value} artifact")
    if artifact.input_spec is None and artifact.contract is not None:
        from exporters.executorch_contract import export_by_contract

        return export_by_contract(artifact, Path(path))
    path = Path(path)
    start = time.perf_counter()
    model = artifact.model.eval()
    g = torch.Generator().manual_seed(0)
    # torch.export specialises a batch of 1 to a constant, so a dynamic batch is traced at 2.
    example = torch.randn(artifact.input_spec.batch_shape(2 if dynamic_batch and max_batch > 1 else 1), generator=g)
    shapes = ({0: torch.export.Dim("batch", min=1, max=int(max_batch))},) if dynamic_batch else None
    program = capture(model, artifact, example, dynamic_shapes=shapes)
    lowered = lower_to_pte(program, path)
    planned = lowered["planned_batch"]
    if dynamic_batch and planned < max_batch:
        # ExecuTorch 1.5 plans at most 15 for a dynamic batch whatever the bound asked: record the truth.
        log.warning("ExecuTorch planned a dynamic batch of at most %d (asked %d); larger batches run in chunks",
                    planned, max_batch)
    max_batch = planned if dynamic_batch else 1
    record = StageRecord(stage="export",
                         options={"format": "executorch", "precision": "fp32", "dynamic_batch": bool(dynamic_batch),
                                  "max_batch": max_batch, "backend": "xnnpack"},
                         seconds=time.perf_counter() - start)
    extra: dict[str, Any] = {"precision": "fp32", "dynamic_batch": bool(dynamic_batch),
                             "max_batch": max_batch,
                             "executorch": lowered["executorch"],
                             "executorch_non_delegated_ops": lowered["non_delegated_ops"],
                             "executorch_delegated_ops": lowered["delegated_ops"]}
    return artifact.with_stage(record, path=path, format=Format.EXECUTORCH, extra=extra)


def _require() -> None:
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError:
        raise MissingDependencyError("executorch", "mobile", "ExecuTorch export") from None


def capture(model, artifact: Artifact, example, *, dynamic_shapes=None):
    """``torch.export.export(model, (example,))`` (``example`` a tuple: every input of a model by its contract);
    a failure names the unconvertible op and the module calling it.

    Shared by the fp32 export and the PT2E int8 path (:mod:`edgetl.quantize.pt2e`), which also re-captures the
    converted (quantized) graph module through here before lowering.
    """
    import torch

    try:
        args = example if isinstance(example, tuple) else (example,)
        return torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds
        from exporters.onnx import modules_calling, unconvertible_op

        op = unconvertible_op(str(e))
        where = modules_calling(model, artifact, op) if op else []
        at = f" (aten::{op} in module {', '.join(where)})" if where else ""
        raise ExportError(f"torch.export could not capture the model{at}: {_first_line(e)}") from None


def lower_to_pte(program, path: str | Path) -> dict[str, Any]:
    """Lower an exported program to XNNPACK and write the ``.pte`` at ``path`` atomically.

    Returns what the lowering did: ops inside XNNPACK delegates (``delegated_ops``), compute ops left on portable
    kernels (``non_delegated_ops``, also logged as a warning), the batch the input is planned for, the version.
    Both the fp32 exporter and the PT2E int8 quantizer write their programs through here, so an int8 model and
    its fp32 reference are lowered identically.

    Example::

        info = lower_to_pte(torch.export.export(model, (x,)), Path("model.pte"))
    """
    _require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        leftover = _non_delegated(edge)
        inside = _delegated(edge)
        buffer = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001
        from exporters.onnx import unconvertible_op

        op = unconvertible_op(str(e))
        raise ExportError(f"ExecuTorch lowering failed{f' at aten::{op}' if op else ''}: {_first_line(e)}") from None
    if leftover:
        log.warning("ExecuTorch: %d op(s) not delegated to XNNPACK, they run on portable kernels: %s",
                    sum(leftover.values()), ", ".join(f"{k} x{v}" for k, v in leftover.items()))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
        planned = _planned_batch(tmp)
    import executorch.version

    return {"non_delegated_ops": dict(leftover), "delegated_ops": dict(inside), "planned_batch": planned,
            "executorch": executorch.version.__version__}


def _planned_batch(path: Path) -> int:
    from executorch.runtime import Runtime

    from edgetl.runtimes.executorch_runner import planned_batch

    return planned_batch(Runtime.get().load_program(str(path)))


_BOOKKEEPING = ("executorch_call_delegate", "getitem", "sym_size", "view_copy", "alloc", "_assert")


def _compute_ops(graph_module) -> collections.Counter:
    """Compute ops of a graph by name (shape/view bookkeeping ops are not counted)."""
    counts: collections.Counter = collections.Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if not any(s in name for s in _BOOKKEEPING):
            # edge ops are named "aten.convolution.default", ATen ones "add.Tensor": keep the op's own name
            parts = name.split(".")
            counts[parts[-2] if len(parts) >= 3 else parts[0]] += 1
    return counts


def _non_delegated(edge) -> collections.Counter:
    """Compute ops left outside any delegate."""
    return _compute_ops(edge.exported_program().graph_module)


def _delegated(edge) -> collections.Counter:
    """Compute ops inside the XNNPACK delegates (quantize/dequantize included: they show an int8 graph)."""
    counts: collections.Counter = collections.Counter()
    for _, child in edge.exported_program().graph_module.named_children():
        original = getattr(child, "original_module", None)
        if original is not None:
            counts.update(_compute_ops(original.graph_module))
    return counts


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
