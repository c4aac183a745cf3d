"""Runtime operator names mapped back to the PyTorch modules they came from.

``torch.onnx.export`` (TorchScript exporter) names nodes by module scope (``/_blocks.0/_depthwise_conv/Conv``,
``/features/features.0/features.0.0/Conv``); the dynamo exporter names them ``node_Conv_12`` and keeps the scope
in the node's ``pkg.torch.onnx.name_scopes`` metadata; OpenVINO keeps ONNX names as friendly names (plus
suffixes such as ``/WithoutBiases``) and, converting a module directly, writes ``__module.features.0/aten::...``;
ONNX Runtime's profiler reports node names with ``_kernel_time`` and names fused or re-laid-out nodes after
their first input (``/_conv_stem/Conv_output_0_nchwc``). :class:`OpNameMapper` undoes all of these; given the
source model's module names it keeps only names that exist, and says when one does not.

Example::

    mapper = OpNameMapper.from_onnx("model.onnx", module_names={n for n, _ in model.named_modules()})
    mapper.module("/_blocks.0/_depthwise_conv/Conv_output_0_nchwc")   # "_blocks.0._depthwise_conv"
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OpNameMapper", "module_from_path"]

_SUFFIXES = re.compile(r"(_kernel_time|_fence_before|_fence_after|/WithoutBiases|_output_\d+.*|_nchwc|_token_\d+"
                       r"|/fq_\w+|/[A-Z]\w*Fusion/?)$")
_COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_FUSABLE = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Mul", "Add", "BatchNormalization"}
_TORCH_MODULE = re.compile(r"__module\.([\w.]+)")


def module_from_path(name: str) -> str | None:
    """The dotted module path an operator name encodes, or None when it encodes none."""
    m = _TORCH_MODULE.search(name)
    if m:
        return m.group(1)
    if "/" not in name:
        return None
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2:
        return None
    segs: list[str] = []
    for comp in parts[:-1]:  # the last component is the operator (Conv, Mul, ...)
        if not re.fullmatch(r"[\w.]+", comp):
            break
        # TorchScript exporter: a child of a container repeats the container's own name ("features" ->
        # "features.1", "conv" -> "conv.0" -> "conv.0.0"); replace that tail of the path instead of appending
        for k in range(len(segs), 0, -1):
            tail = ".".join(segs[-k:])
            if comp.startswith(tail + "."):
                segs = segs[:-k]
                break
        segs.extend(comp.split("."))
    return ".".join(segs) or None


class OpNameMapper:
    """Maps a runtime's operator names to module names (optionally checked against the model's modules)."""

    def __init__(self, node_modules: dict[str, str] | None = None, module_names: Iterable[str] | None = None) -> None:
        self.node_modules = dict(node_modules or {})
        self.module_names = set(module_names) - {""} if module_names is not None else None
        self._by_length = sorted(self.node_modules, key=len, reverse=True)

    @classmethod
    def from_onnx(cls, path: str | Path, *, module_names: Iterable[str] | None = None) -> OpNameMapper:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        nodes: dict[str, str] = {}
        producer: dict[str, object] = {}
        for n in model.graph.node:
            scope = _scope_from_metadata(n)
            mod = scope if scope is not None else module_from_path(n.name)
            if mod:
                nodes[n.name] = mod
            for o in n.output:
                producer[o] = n
        # ONNX Runtime names a fused node after its output tensor ("relu_1_nchwc"): map output tensors too,
        # charging an activation fused into a convolution to the convolution's module
        for tensor, n in producer.items():
            src = n
            if n.op_type in _FUSABLE and n.input and n.input[0] in producer:
                first = producer[n.input[0]]
                if first.op_type in _COMPUTE_OPS:
                    src = first
            if src.name in nodes and tensor not in nodes:
                nodes[tensor] = nodes[src.name]
        return cls(nodes, module_names)

    def _known(self, dotted: str | None) -> str | None:
        """The longest prefix of ``dotted`` that is a real module (all of it when no module list is known)."""
        if dotted is None or self.module_names is None:
            return dotted
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in self.module_names:
                return cand
        return None

    def module(self, op_name: str) -> str | None:
        if op_name in self.node_modules:
            return self._known(self.node_modules[op_name])
        stripped = op_name
        for _ in range(3):
            stripped = _SUFFIXES.sub("", stripped)
        if stripped in self.node_modules:
            return self._known(self.node_modules[stripped])
        for node in self._by_length:  # a node created from another keeps its name as a prefix
            if len(node) > 3 and (op_name.startswith(node) or stripped.startswith(node)):
                return self._known(self.node_modules[node])
        # re-laid-out inputs are named after the layer they feed: "input_abcd_acdb_/_conv_stem/Conv"
        inner = op_name[op_name.find("/"):] if "/" in op_name and not op_name.startswith("/") else None
        if inner and inner != op_name:
            found = self.module(inner)
            if found:
                return found
        return self._known(module_from_path(stripped))


def _scope_from_metadata(node) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            # ['', '_blocks.0', '_blocks.0._bn1', 'op_name']: the deepest module scope before the op itself
            mods = [s for s in scopes[:-1] if s]
            return mods[-1] if mods else None
    return None
