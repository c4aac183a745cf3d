"""Canonizers that make a network follow LRP's assumptions before zennit explains it: batch-norm merged into the
layer feeding it, residual additions turned into zennit ``Sum`` modules (the ``Norm`` rule splits relevance between
the branches in proportion to their contributions). zennit ships the residual canonizer for torchvision ResNets
only; :func:`residual_sums` does it for any network ``torch.fx`` can trace.

``example`` is one input tensor, or a tuple of the positional inputs of a model with several.

Example::

    model, canonizers, names, notes = choose_canonizers(model, torch.zeros(1, 3, 32, 32))
"""

from __future__ import annotations

from typing import Any

from edgetl.prune.feeds import call

__all__ = ["choose_canonizers", "conv_bn_pairs", "residual_sums"]


def _is_torchvision_resnet(model) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules())


def conv_bn_pairs(model, example) -> list[tuple[tuple[str], str]]:
    """(conv/linear name,), batch-norm name) for every batch-norm whose input is exactly a conv/linear output.

    Found by running ``example`` through the model rather than by module order: architectures such as
    EfficientNet-Lite wrap their convolutions in padding modules, which defeats zennit's sequential search.
    """
    import torch
    import torch.nn as nn

    produced: dict[int, tuple[str, Any]] = {}
    pairs: list[tuple[tuple[str], str]] = []
    handles = []

    def on_layer(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)  # keep the tensor alive so its id stays unique
        return hook

    def on_bn(name):
        def hook(module, inputs):
            src = produced.get(id(inputs[0]))
            if src is not None and src[1] is inputs[0]:
                pairs.append(((src[0],), name))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(m.register_forward_hook(on_layer(name)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for h in handles:
            h.remove()
    seen: set[str] = set()
    return [p for p in pairs if not (p[1] in seen or seen.add(p[1]))]


def _carries_input(node) -> bool:
    """Whether an fx node's value depends on a model input through values, not only through its shape."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op == "placeholder":
            return True
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "getattr" and n.args[1:] in (
                ("shape",), ("dtype",), ("device",)):
            continue
        if n.op == "call_method" and n.target in ("size", "dim"):
            continue
        stack.extend(a for a in n.all_input_nodes)
    return False


def residual_sums(model, example) -> tuple[Any, int]:
    """A ``torch.fx`` copy of ``model`` in which every addition of two same-shape tensors is a zennit ``Sum``
    module, so the composite's ``Norm`` rule splits relevance between the branches in proportion to their
    contributions: the residual canonizer zennit ships for torchvision ResNets only, for any traceable network.

    Module names are kept (``fx`` keeps the submodule paths), so per-layer scores still map to the original
    layers. Returns the copy and the number of additions rewritten; raises what ``torch.fx`` raises for a
    network it cannot trace (the caller falls back and says so).
    """
    import operator

    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp
    from zennit.layer import Sum

    class _LayerLeaves(fx.Tracer):
        # Subclasses of conv/linear/norm layers (EfficientNet-Lite's same-padding convs, say) stay whole modules:
        # traced into, they would become bare functions that no zennit rule (and no score) can attach to.
        def is_leaf_module(self, m, qualname: str) -> bool:
            layer = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm)
            return isinstance(m, layer) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, _LayerLeaves().trace(model), class_name=type(model).__name__)
    ShapeProp(gm).propagate(*(example if isinstance(example, tuple) else (example,)))
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, operator.iadd, torch.add):
            continue
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        metas = [a.meta.get("tensor_meta") for a in node.args]
        if any(m is None or not hasattr(m, "shape") for m in metas) or metas[0].shape != metas[1].shape:
            continue  # scalars, shapes, or broadcasting adds (a bias): not a residual join
        if not all(_carries_input(a) for a in node.args):
            continue  # one branch is a constant (an anchor grid built from the input's shape): a bias, not a join
        name = f"edgetl_residual_sum_{count}"
        gm.add_submodule(name, Sum(dim=-1))
        with gm.graph.inserting_before(node):
            stacked = gm.graph.call_function(torch.stack, args=(tuple(node.args),), kwargs={"dim": -1})
            summed = gm.graph.call_module(name, args=(stacked,))
        summed.meta = dict(node.meta)  # a following block's residual add reads its shape from here
        node.replace_all_uses_with(summed)
        gm.graph.erase_node(node)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), count


def choose_canonizers(model, example) -> tuple[Any, list, list[str], list[str]]:
    """Canonize ``model`` for LRP: (model to explain, zennit canonizers, their names, honest notes on gaps).

    torchvision ResNets get zennit's own block canonizers; any other network's residual additions are rewritten
    into ``Sum`` modules by :func:`residual_sums` when ``torch.fx`` can trace it (the returned model is then that
    traced copy); batch-norms directly after a conv/linear are merged into it.
    """
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    names: list[str] = []
    notes: list[str] = []
    extra: list = []
    if _is_torchvision_resnet(model):
        extra = [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
        names.append("ResNet block canonizers (residual addition as a Sum module, Norm rule)")
    else:
        try:
            traced, n_sums = residual_sums(model, example)
        except Exception as e:  # noqa: BLE001 - fx raises many types; any of them means "not traceable"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            notes.append(f"no residual-sum canonizer for {type(model).__name__}: torch.fx cannot trace it ({first}); "
                         "if its forward() adds branches, each addition passes relevance to both branches "
                         "unnormalised, so relevance is not conserved across residual blocks")
        else:
            model = traced
            if n_sums:
                names.append(f"residual sums ({n_sums} additions traced with torch.fx into Sum modules, Norm rule)")
    pairs = conv_bn_pairs(model, example)
    canonizers: list = [NamedMergeBatchNorm(pairs)] if pairs else []
    if pairs:
        names.insert(0, f"NamedMergeBatchNorm ({len(pairs)} batch-norms merged into the layer feeding them)")
    bn_total = sum(isinstance(m, __import__("torch").nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if bn_total > len(pairs):
        notes.append(f"{bn_total - len(pairs)} of {bn_total} batch-norm layers do not directly follow a conv/linear "
                     "layer and were not merged (Pass rule)")
    return model, canonizers + extra, names, notes
