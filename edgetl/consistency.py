"""Shift consistency: does the prediction survive moving the image by one pixel?

"Lost in Translation" (arXiv 2404.07153) finds that a 1-pixel shift changes a large share of predictions of
image models; the consistency metric of antialiased-cnns (Zhang, ICML 2019) is the fraction of inputs whose
prediction agrees between two shifted copies. Here each image is translated by one pixel in each of four
directions (edges replicated, no wrap-around) and the prediction compared with the unshifted one:
classification compares the top-1 class, segmentation the per-pixel argmax after shifting the reference map the
same way (the border pixels a shift invents are left out). The model runs through ``run(feed) -> outputs``, so
any runtime plugs in, and the same number is comparable between a source and its compressed artifacts.

Example::

    res = shift_consistency(lambda feed: {"logits": model(torch.from_numpy(feed["image"])).numpy()},
                            batches, contract=c)
    res.consistency      # 0.93
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.contract import InputTensor, ModelContract, OutputTensor, Role
from edgetl.errors import ConfigError

__all__ = ["DEFAULT_SHIFTS", "ShiftConsistency", "shift_consistency", "translate"]

DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (dy, dx) in pixels


@dataclass(frozen=True)
class ShiftConsistency:
    output: str
    role: str
    consistency: float  # mean agreement over shifts and samples, in [0, 1]
    per_shift: dict[str, float] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "role": self.role, "consistency": self.consistency,
                "per_shift": dict(self.per_shift), "samples": self.samples}


def _spatial_axes(t: InputTensor) -> tuple[int, int]:
    layout = (t.layout or "NCHW").replace(",", "").upper()
    if len(layout) != 4 or "H" not in layout or "W" not in layout:
        raise ConfigError(f"input {t.name!r} has layout {t.layout!r}; shift consistency needs an image layout "
                          "such as NCHW or NHWC")
    return layout.index("H"), layout.index("W")


def translate(x: np.ndarray, dy: int, dx: int, *, axes: tuple[int, int] = (2, 3)) -> np.ndarray:
    """``x`` moved by ``dy`` rows and ``dx`` columns along ``axes``; the edge row/column is replicated into the
    gap (no wrap-around, which would invent a seam)."""
    out = x
    for shift, axis in ((dy, axes[0]), (dx, axes[1])):
        if shift == 0:
            continue
        n = out.shape[axis]
        if abs(shift) >= n:
            raise ConfigError(f"cannot shift by {shift} pixels along an axis of size {n}")
        idx = np.clip(np.arange(n) - shift, 0, n - 1)
        out = np.take(out, idx, axis=axis)
    return out


def _pick(contract: ModelContract, input_name: str | None, output_name: str | None
          ) -> tuple[InputTensor, OutputTensor]:
    if input_name is not None:
        image = contract.input(input_name)
    else:
        images = [t for t in contract.inputs if t.rank == 4]
        if len(images) != 1:
            raise ConfigError(f"shift consistency needs one image input (rank 4); the model has "
                              f"{len(images)} of {len(contract.inputs)} inputs of rank 4: name it (input_name)")
        image = images[0]
    if output_name is not None:
        out = contract.output(output_name)
    else:
        outs = [o for o in contract.metric_outputs() if o.role in (Role.LOGITS, Role.MASK)]
        if len(outs) != 1:
            raise ConfigError("shift consistency reads one logits or mask output; give the output its role with "
                              "--role NAME:logits or --role NAME:mask, or select it with --output")
        out = outs[0]
    if out.role not in (Role.LOGITS, Role.MASK):
        raise ConfigError(f"output {out.name!r} has role {out.role.value}; shift consistency is defined for logits "
                          "(top-1) and mask (per-pixel) outputs")
    return image, out


def _prediction(o: OutputTensor, y: np.ndarray) -> np.ndarray:
    default = -1 if o.role == Role.LOGITS else 1
    axis = o.axis("C", default) % y.ndim
    if y.shape[axis] == 1:
        return (np.take(y, 0, axis) > 0).astype(np.int64)
    return y.argmax(axis)


def shift_consistency(run: Callable[[dict[str, np.ndarray]], Any], batches: Iterable[Mapping[str, Any]], *,
                      contract: ModelContract, input_name: str | None = None, output_name: str | None = None,
                      shifts: tuple[tuple[int, int], ...] = DEFAULT_SHIFTS) -> ShiftConsistency:
    """Agreement of ``run``'s prediction under 1-pixel translations of the image input, over ``batches`` (dicts of
    every model input by name). Other inputs are passed through unchanged."""
    image, out = _pick(contract, input_name, output_name)
    h_axis, w_axis = _spatial_axes(image)
    agree = {s: [0, 0] for s in shifts}
    samples = 0

    def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
        res = run(feed)
        y = res[out.name] if isinstance(res, Mapping) else res
        return _prediction(out, np.asarray(y))

    for batch in batches:
        feed = {k: np.asarray(v) for k, v in batch.items()}
        base = predict(feed)
        samples += int(feed[image.name].shape[0])
        for dy, dx in shifts:
            moved = predict({**feed, image.name: translate(feed[image.name], dy, dx, axes=(h_axis, w_axis))})
            if out.role == Role.LOGITS:
                same = moved == base
            else:
                size = feed[image.name].shape
                if base.shape[-2:] != (size[h_axis], size[w_axis]):
                    raise ConfigError(f"mask output {out.name!r} is {base.shape[-2:]} for an image of "
                                      f"{feed[image.name].shape}; per-pixel shift consistency needs the mask at the "
                                      "input's resolution")
                expect = translate(base, dy, dx, axes=(base.ndim - 2, base.ndim - 1))
                inner = (slice(None),) * (base.ndim - 2) + (slice(max(dy, 0), base.shape[-2] + min(dy, 0)),
                                                           slice(max(dx, 0), base.shape[-1] + min(dx, 0)))
                same = moved[inner] == expect[inner]
            agree[(dy, dx)][0] += int(same.sum())
            agree[(dy, dx)][1] += int(same.size)
    if samples == 0:
        raise ConfigError("shift consistency got no samples: the data is empty")
    per = {f"{dy:+d},{dx:+d}": a / n for (dy, dx), (a, n) in agree.items()}
    total = sum(a for a, _ in agree.values()) / sum(n for _, n in agree.values())
    return ShiftConsistency(output=out.name, role=out.role.value, consistency=float(total), per_shift=per,
                            samples=samples)
