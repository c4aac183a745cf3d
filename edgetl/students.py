"""The project's own lightweight student: a small depthwise-separable CNN for edge CPUs.

In the spirit of "Building Efficient Lightweight CNN Models" (a few thousand to tens of thousands of
parameters, depthwise-separable blocks, trained on original plus augmented views, then progressive
unfreezing; see :class:`~edgetl.distill.distiller.DistillConfig` ``views`` and ``unfreeze``).

Design choices for latency at small inputs (e.g. 3x64x64): every block halves the resolution, so the
expensive full-resolution work is one strided 3x3 stem; ReLU (not swish/hardswish) and BatchNorm right after
each conv, which fold into the convs at export and quantize cleanly to int8; no squeeze-excitation (its
global pooling per block costs latency far beyond its FLOPs on CPUs); few layers, because at this size the
per-operator overhead of the runtime, not arithmetic, dominates.

Example::

    from edgetl.models import build_arch
    net = build_arch("edgetl_tinycnn", num_classes=10)     # ~12k parameters
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from edgetl.errors import ConfigError
from edgetl.models import ArchSpec, register_arch

__all__ = ["TINYCNN_WIDTHS", "TinyCNN", "count_flops"]

TINYCNN_WIDTHS = (16, 32, 64, 96)


def _conv_bn_relu(cin: int, cout: int, *, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Stem conv (stride 2), then depthwise-separable blocks (each stride 2), global pooling, linear head.

    ``widths[0]`` is the stem's width and each later entry one block's output width.
    """

    def __init__(self, num_classes: int = 10, *, widths: Sequence[int] = TINYCNN_WIDTHS, in_channels: int = 3,
                 dropout: float = 0.1) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError(f"TinyCNN widths need a stem and at least one block, all positive; got {widths}")
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, widths[0], kernel=3, stride=2)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers.append(nn.Sequential(
                _conv_bn_relu(cin, cin, kernel=3, stride=2, groups=cin),  # depthwise: spatial mixing
                _conv_bn_relu(cin, cout, kernel=1, stride=1),  # pointwise: channel mixing
            ))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass (multiply and add counted separately), by torch's counter.

    Example::

        count_flops(net, (1, 3, 64, 64))
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(tuple(input_shape), device=param.device if param is not None else "cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    return int(counter.get_total_flops())


SMALLCNN_WIDTHS = (24, 48, 96, 128)
MEDIUMCNN_WIDTHS = (32, 64, 128, 256)

# The zoo entries: one TinyCNN each, differing only in widths.
_STUDENTS = {
    "edgetl_tinycnn": (TINYCNN_WIDTHS, "edgetl's own depthwise-separable student (~12k params at 10 classes); "
                                       "train by distillation"),
    "edgetl_smallcnn": (SMALLCNN_WIDTHS, "the same student, wider (24-48-96-128, ~22k params at 10 classes): more "
                                         "accuracy, ~2x the FLOPs"),
    "edgetl_mediumcnn": (MEDIUMCNN_WIDTHS, "the same student, wider still (32-64-128-256, ~50k params at 10 "
                                           "classes): the accurate one"),
}


def _builder(widths: tuple[int, ...]):
    def build(num_classes: int = 1000, pretrained: bool = False) -> TinyCNN:
        return TinyCNN(num_classes, widths=widths)

    return build


for _name, (_widths, _description) in _STUDENTS.items():
    register_arch(ArchSpec(name=_name, build=_builder(_widths), family="edgetl", pretrained_available=False,
                           default_resolution=64, description=_description))
