"""What a model costs: parameters, FLOPs/MACs (counted by PyTorch's own ``FlopCounterMode``), bytes, widths.

``torch_pruning.utils.count_ops_and_params`` under-counts EfficientNet-Lite0 (21 M MACs reported for a model
whose real cost is ~0.4 G MACs at 224x224), so edgetl counts with ``torch.utils.flop_counter`` instead: it sees
every aten convolution and matmul, whatever module wraps it. One multiply-add is two FLOPs.

Example::

    cost = model_cost(model, (3, 64, 64))
    cost.params, cost.macs
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ModelCost", "count_flops", "count_params", "layer_widths", "model_cost", "state_dict_bytes"]


@dataclass(frozen=True)
class ModelCost:
    params: int
    flops: int  # floating-point operations for one sample (a multiply-add counts 2)
    bytes: int  # size of the serialized fp32 state dict

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "macs": self.macs}


def count_params(model) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_flops(model, input_shape: tuple[int, ...] | None = None, *, example: Any = None) -> int:
    """FLOPs of one forward pass on a batch of one ``input_shape`` (C, H, W) sample, in eval mode; or, for a
    model with several inputs (or any other input), on ``example`` (a tensor or a tuple of positional inputs,
    one sample)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgetl.prune.feeds import call

    was_training = model.training
    model.eval()
    try:
        if example is None:
            param = next(model.parameters(), None)
            example = torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else torch.float32)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call(model, example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def state_dict_bytes(model) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the weights occupies."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def model_cost(model, input_shape: tuple[int, ...] | None = None, *, example: Any = None) -> ModelCost:
    """Parameters, FLOPs (at ``input_shape`` or on ``example``, see :func:`count_flops`) and weight bytes."""
    return ModelCost(params=count_params(model), flops=count_flops(model, input_shape, example=example),
                     bytes=state_dict_bytes(model))


def layer_widths(model) -> dict[str, Any]:
    """Output width of every convolution and linear layer, by module name."""
    import torch.nn as nn

    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out
