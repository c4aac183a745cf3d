"""ONNX export: ``torch.onnx.export`` (dynamo, falling back to TorchScript), onnxslim, checker, metadata.

Why dynamo first and what is done to its output: the dynamo exporter gives the cleaner graph (no Pad/Transpose
shape arithmetic around "same" padding) but expresses global average pooling as ``ReduceMean`` over H, W,
which ONNX Runtime's int8 QDQ fusion does not fuse (the TorchScript exporter's ``GlobalAveragePool`` does;
measured 7.1 vs 9.0 ms on efficientnet_b0 U8S8). So after simplification every ``ReduceMean`` over the two
spatial axes of a 4-D tensor with ``keepdims=1`` is rewritten to the exactly equivalent ``GlobalAveragePool``:
the graph downstream int8 quantization sees is the best of both exporters. When dynamo fails, or cannot
produce the requested opset (it silently keeps its own opset then), the TorchScript exporter is used and the
reason logged and recorded in the artifact (``extra["onnx_exporter_fallback"]``).

For the quantization stage and other callers, :func:`export_onnx` is the one function to call.

Example::

    onnx_art = export_onnx(art, Path("out/model.onnx"), dynamic_batch=True)
    load_model("out/model.onnx")          # reads the embedded metadata / sidecar back
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, StageRecord
from edgetl.errors import ExportError, MissingDependencyError
from edgetl.fileio import atomic_path

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "embed_metadata", "export_onnx", "exporter", "is_qdq"]

log = logging.getLogger(__name__)

# The opset the dynamo exporter emits natively in torch 2.9+; others go through the TorchScript exporter.
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_KEY = "edgetl"
_EXPORTERS = ("auto", "dynamo", "torchscript")


def exporter(artifact: Artifact, out: Path, options) -> Artifact:
    """The format-table entry point (see :mod:`exporters.base`)."""
    return export_onnx(artifact, out, opset=options.opset, dynamic_batch=options.dynamic_batch)


def export_onnx(
    artifact: Artifact,
    path: str | Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    exporter: str = "auto",
    simplify: bool = True,
) -> Artifact:
    """Export a PyTorch artifact to one self-contained, checked ``.onnx`` file (atomic) and return it.

    ``exporter``: ``auto`` (dynamo, falling back to TorchScript), ``dynamo`` or ``torchscript``.
    The input is named ``input`` (batch dimension ``batch`` when dynamic), the output ``logits``.
    No sidecar is written here; :func:`exporters.base.write_metadata` does that once the export is final.
    """
    _require("onnx", "onnxslim")
    import onnx

    if exporter not in _EXPORTERS:
        from edgetl.errors import UnknownNameError

        raise UnknownNameError("ONNX exporter", exporter, _EXPORTERS)
    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ExportError(f"ONNX export needs a PyTorch model; got a {artifact.format.value} artifact")
    path = Path(path)
    opset = int(opset or DEFAULT_OPSET)
    start = time.perf_counter()
    model = artifact.model.eval()
    used, fallback_reason = None, None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-export.", dir=path.parent) as scratch:
        raw = Path(scratch) / "raw.onnx"
        errors: list[BaseException] = []
        if exporter in ("auto", "dynamo") and not _is_script(model):
            try:
                _dynamo(model, artifact, raw, opset=opset, dynamic_batch=dynamic_batch)
                used = "dynamo"
            except Exception as e:  # noqa: BLE001 - any dynamo failure means: try the other exporter
                errors.append(e)
                fallback_reason = f"{type(e).__name__}: {_first_line(e)}"
                if exporter == "auto":
                    log.warning("dynamo ONNX exporter failed (%s); falling back to the TorchScript exporter",
                                fallback_reason)
        if used is None and exporter in ("auto", "torchscript"):
            try:
                _torchscript(model, artifact, raw, opset=opset, dynamic_batch=dynamic_batch)
                used = "torchscript"
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if used is None:
            raise _conversion_error(model, artifact, errors) from None
        proto = onnx.load(str(raw))
    if simplify:
        proto = _simplify(proto)
    proto = global_pool_from_reduce_mean(proto)
    _check(proto)
    contract = _embed_contract(proto, artifact) if _by_contract(artifact) else None
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    record = StageRecord(
        stage="export",
        options={"format": "onnx", "opset": opset, "dynamic_batch": bool(dynamic_batch), "precision": "fp32",
                 "exporter": used},
        seconds=time.perf_counter() - start,
    )
    in_names, out_names = _io_names(artifact)
    extra: dict[str, Any] = {"precision": "fp32", "dynamic_batch": bool(dynamic_batch), "opset": opset,
                             "onnx_exporter": used, "input_name": in_names[0], "output_name": out_names[0]}
    if fallback_reason and used == "torchscript":
        extra["onnx_exporter_fallback"] = fallback_reason
    return artifact.with_stage(record, path=path, format=Format.ONNX, extra=extra, contract=contract)


# --------------------------------------------------------------------------- any model: by its contract
def _by_contract(artifact: Artifact) -> bool:
    """A model that is not an input-spec classifier is exported by its contract: its input and output names,
    dynamic axes (a dynamic H x W survives) and example inputs at the contract's opt shapes."""
    return artifact.input_spec is None and artifact.contract is not None


def _is_script(model) -> bool:
    import torch

    return isinstance(model, torch.jit.ScriptModule)


def _io_names(artifact: Artifact) -> tuple[list[str], list[str]]:
    if not _by_contract(artifact):
        return [INPUT_NAME], [OUTPUT_NAME]
    c = artifact.contract
    return list(c.input_names), list(c.output_names) or ["output"]


def _contract_example(artifact: Artifact) -> tuple:
    import torch

    from edgetl.contract_shapes import example_inputs

    feed = example_inputs(artifact.contract)
    return tuple(torch.from_numpy(feed[n]) for n in artifact.contract.input_names)


def _embed_contract(proto, artifact: Artifact):
    """The exported file's own contract (names and dims as the graph has them) with the source's roles, layouts
    and task (outputs matched by position), recorded in the file's metadata and returned."""
    import dataclasses

    from edgetl.contract_read import embed_onnx, read_onnx

    src = artifact.contract
    got = read_onnx(proto)
    outs = tuple(dataclasses.replace(o, role=s.role, layout=s.layout, box_format=s.box_format)
                 for o, s in zip(got.outputs, src.outputs, strict=False)) + got.outputs[len(src.outputs):]
    ins = tuple(dataclasses.replace(t, value_range=s.value_range, mean=s.mean, std=s.std, layout=s.layout,
                                    min_shape=s.min_shape, opt_shape=s.opt_shape, max_shape=s.max_shape)
                for t, s in zip(got.inputs, src.inputs, strict=True))
    selected = tuple(outs[src.output_names.index(n)].name for n in src.selected if n in src.output_names)
    contract = dataclasses.replace(got, inputs=ins, outputs=outs, task=src.task, selected=selected)
    embed_onnx(proto, contract)
    return contract


# --------------------------------------------------------------------------- the two exporters
def _example(artifact: Artifact, dynamic_batch: bool):
    import torch

    # torch.export specialises a batch of 1 to a constant, so a dynamic batch is traced at 2.
    g = torch.Generator().manual_seed(0)
    return torch.randn(artifact.input_spec.batch_shape(2 if dynamic_batch else 1), generator=g)


@contextlib.contextmanager
def _quiet():
    """Keep stdout clean for ``--json``: torch.onnx prints progress from Python, and the TorchScript exporter
    logs its graph from C++ straight to file descriptor 1 (its "log enabled" check tests a function object,
    which is always true). Both are captured and sent to the debug log instead."""
    out = io.StringIO()
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                yield out
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            captured = sink.read().decode(errors="replace")
    if out.getvalue() or captured:
        log.debug("exporter output: %s%s", out.getvalue()[-2000:], captured[-2000:])


def _dynamo(model, artifact: Artifact, path: Path, *, opset: int, dynamic_batch: bool) -> None:
    import onnx
    import torch

    kw: dict[str, Any] = {}
    if _by_contract(artifact):
        from edgetl.contract_shapes import torch_dynamic_shapes

        example = _contract_example(artifact)
        dyn = torch_dynamic_shapes(artifact.contract)
        if any(v for v in dyn.values()):
            kw["dynamic_shapes"] = tuple(dyn[n] for n in artifact.contract.input_names)
    else:
        example = (_example(artifact, dynamic_batch),)
        if dynamic_batch:
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
    in_names, out_names = _io_names(artifact)
    with _quiet():
        torch.onnx.export(model, example, str(path), dynamo=True, external_data=False,
                          opset_version=opset, input_names=in_names, output_names=out_names,
                          verbose=False, **kw)
    got = _default_opset(onnx.load(str(path), load_external_data=False))
    if got != opset:
        # The dynamo exporter keeps its own opset when the version converter fails; that is not what was asked.
        raise ExportError(f"dynamo exporter produced opset {got}, not the requested {opset}")


def _torchscript(model, artifact: Artifact, path: Path, *, opset: int, dynamic_batch: bool) -> None:
    import warnings

    import torch

    in_names, out_names = _io_names(artifact)
    if _by_contract(artifact):
        from edgetl.contract_shapes import onnx_dynamic_axes

        example = _contract_example(artifact)
        axes = {k: v for k, v in onnx_dynamic_axes(artifact.contract).items() if k in in_names + out_names} or None
    else:
        example = (_example(artifact, False),)
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice is logged once by the caller instead
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                          input_names=in_names, output_names=out_names, dynamic_axes=axes,
                          do_constant_folding=True)


def _default_opset(proto) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


# --------------------------------------------------------------------------- graph clean-up
def _simplify(proto):
    import onnxslim

    try:
        with _quiet():
            slim = onnxslim.slim(proto)
    except Exception as e:  # noqa: BLE001 - simplification is an optimisation; the unsimplified graph is valid
        log.warning("onnxslim could not simplify the graph (%s); keeping it as exported", _first_line(e))
        return proto
    return slim if slim is not None else proto


def global_pool_from_reduce_mean(proto):
    """Rewrite ``ReduceMean(axes=[2,3] or [-2,-1], keepdims=1)`` of a 4-D tensor to ``GlobalAveragePool``.

    The two compute the same thing; ``GlobalAveragePool`` is what int8 QDQ fusion in ONNX Runtime recognises.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - without ranks nothing can be proven equivalent; leave the graph
        return proto
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*inferred.graph.value_info, *inferred.graph.input] if v.type.tensor_type.HasField("shape")}
    changed = 0
    for i, n in enumerate(graph.node):
        if n.op_type != "ReduceMean" or ranks.get(n.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = attrs.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1] in consts:
            axes = consts[n.input[1]].tolist()
        if attrs.get("keepdims", 1) != 1 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        graph.node[i].CopyFrom(helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name))
        changed += 1
    if changed:
        log.debug("rewrote %d spatial ReduceMean node(s) to GlobalAveragePool", changed)
        _drop_unused_initializers(graph)
    return proto


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used or init.name in {i.name for i in graph.input}]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise ExportError(f"the exported ONNX graph fails onnx.checker: {_first_line(e)}") from None


# --------------------------------------------------------------------------- metadata
def embed_metadata(path: str | Path, payload: dict[str, Any]) -> None:
    """Store ``payload`` as JSON in the ONNX ``metadata_props`` under ``edgetl`` (rewrites the file atomically)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    props = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(payload, default=str)
    proto.producer_name = "edgetl"
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def is_qdq(path: str | Path) -> bool:
    """Whether an ONNX file is explicitly quantized (QuantizeLinear / DequantizeLinear nodes)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


# --------------------------------------------------------------------------- errors
_OP_PATTERNS = (re.compile(r"aten[:.]+(\w+)"), re.compile(r"operator '?(\w+::\w+)"))


def _conversion_error(model, artifact: Artifact, errors: list[BaseException]) -> ExportError:
    text = " ".join(_chain_text(e) for e in errors)
    op = unconvertible_op(text)
    detail = "; ".join(f"{type(e).__name__}: {_first_line(e)}" for e in errors)
    if op is None:
        return ExportError(f"ONNX export failed ({detail}); rerun with --debug for the exporter's log")
    where = modules_calling(model, artifact, op)
    at = f" in module {', '.join(where)}" if where else ""
    return ExportError(
        f"ONNX export failed: operator aten::{op} has no ONNX conversion{at}; replace that layer with supported "
        f"ops, or export to a format that runs it natively (executorch, openvino)"
    )


def unconvertible_op(text: str) -> str | None:
    """The first ATen operator named in an exporter's error text (``linalg_svd`` for ``aten::linalg_svd``)."""
    for pat in _OP_PATTERNS:
        for m in pat.finditer(text):
            name = m.group(1).split("::")[-1]
            if name not in ("default", "Tensor", "ops"):
                return name.split(".")[0]
    return None


def modules_calling(model, artifact: Artifact, op: str) -> list[str]:
    """Dotted paths of the modules whose forward calls ATen ``op`` (run once in eager mode to find out)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    found: list[str] = []
    want = op.lstrip("_")

    class _Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0].lstrip("_")
            if name == want and stack and stack[-1] not in found:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def enter(name):
        def hook(module, args):
            stack.append(name)  # returns None: a hook's return value would replace the module's input

        return hook

    def leave(module, args, output):
        stack.pop()

    hooks = []
    for name, mod in model.named_modules():
        if name:
            hooks += [mod.register_forward_pre_hook(enter(name)), mod.register_forward_hook(leave)]
    try:
        with torch.no_grad(), _Spy():
            model(_example(artifact, False))
    except Exception:  # noqa: BLE001 - locating the op is best effort; the op name alone still helps
        pass
    finally:
        for h in hooks:
            h.remove()
    return found


def _chain_text(e: BaseException) -> str:
    parts = []
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " ".join(parts)


def _require(*modules: str) -> None:
    import importlib.util

    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise MissingDependencyError(m, "onnx", "ONNX export")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__

