"""In-situ latency deltas: each prunable group pruned alone in the FULL model, deployed and timed (NetAdapt-style).

Why: the isolated per-layer table (:mod:`benchmarks.latency_table`) under-predicted pruned EfficientNet-Lite0 by
about 2x on OpenVINO int8. Measured here (demo teacher, 64x64, 2 threads, edgetl's NNCF int8, one quiet window,
``python -m benchmarks.suites.latprune.diagnose``; ``benchmarks/results/latprune-diagnose.{json,md}``):

* The isolated layers cost more than the whole model: their compute (per-call floor of 0.046 ms already
  subtracted) sums to 1.85 ms (convolutions 1.12, depthwise 0.73) against 1.148 ms measured for the whole int8
  model, whose own counters put 0.78 ms in convolutions and 0.32 ms in depthwise convolutions. An isolated layer
  pays its own input quantize, output requantize and layout reorders, which the full graph fuses away; so every
  saving it predicts is inflated (1.4x for convolutions, 2.3x for depthwise) and the sum of savings runs past
  the base (hence the clamp).
* Pruned models save far less than their FLOPs suggest: LRP at 50 % FLOPs measured 1.031 ms (-10 %), every
  group at half width 0.908 ms (-21 %). The table predicted 0.535 / 0.459 ms (-48 % / -49 % error); on four
  held-out pruned models its error was -38 % to -55 %.
* In-situ deltas alone do not fix it: one group at half width in the full model saves 0.02-0.09 ms (timing
  noise about +-0.03 ms), and the 24 single-group savings sum to 0.68 ms while halving all groups together saves
  0.24 ms. Latency is far from additive over groups at this size; the additive prediction erred -8 % (the LRP
  point) to -48 % (uniform half).
* What works is the measured/predicted feedback: one measured pruned model re-fits the scale of the predicted
  change (:meth:`InSituModel.calibrate`, :meth:`benchmarks.latency_table.LatencyTable.calibrate`). Calibrated
  on one held-out model and tested on the other three (all 12 pairs), the error was 8.6 % mean, 16.5 % max for
  the in-situ model and 8.2 % mean, 18.6 % max for the isolated table. That is what the loop in
  :mod:`edgetl.prune.latency_target` now does after every miss, instead of only shrinking the budget.
* The same unpruned IR measured 1.311 ms in the in-situ window and 1.148 ms 5 minutes later (14 % drift between
  quiet windows), so a target in absolute ms carries that much noise: the loop predicts from the unpruned p50
  it measures itself.

The model: ``predict(widths) = base + scale * sum_g delta_g(w_g)``, where ``delta_g(w)`` is the measured change of
the whole deployed model's p50 when group ``g`` alone keeps ``w`` channels (piecewise linear between the measured
widths, 0 at full width, the last segment extended below), ``base`` is the measured unpruned p50 and ``scale`` (1
at first) is re-fitted from measured/predicted feedback. Everything the runtime does to the whole graph (int8
fusion, layout, the squeeze-excitation and head work) is inside each delta; the interaction between groups is
what the scale absorbs.

Example::

    model = build_insitu(teacher.model, (3, 64, 64), deploy=OpenVinoInt8(spec, calib, 2, tmp), time=timed)
    model.predict_ms({"_blocks.3._project_conv": 16}), model.candidates("_blocks.3._project_conv")
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgetl.errors import ConfigError, ModelError

__all__ = ["FINDINGS", "InSituModel", "OpenVinoInt8", "build_insitu", "group_widths", "prunable_groups", "prune_groups_to"]

#: Where the measured figures behind the module docstring are.
FINDINGS = "benchmarks/results/latprune-diagnose.json (python -m benchmarks.suites.latprune.diagnose)"


@dataclass
class InSituModel:
    """Latency of the deployed model at group widths from in-situ deltas; a :class:`edgetl.prune.budget.LatencyModel`."""

    base_ms: float  # the unpruned model's p50 the prediction starts from (the caller sets its own measurement)
    window_base_ms: float  # the unpruned p50 measured in the same window as the deltas
    groups: dict[str, int]  # group -> full width
    deltas: dict[str, dict[int, float]]  # group -> width -> measured p50 change (ms; negative is faster)
    scale: float = 1.0
    floor_ms: float = 0.0  # no prediction goes below this (a positive fraction of the base)
    calibrations: list[dict[str, float]] = field(default_factory=list)
    clamped: int = 0
    grid: bool = False  # candidates between the measured widths too (see candidates)

    def describe(self) -> str:
        return f"in-situ deltas ({len(self.groups)} groups, {sum(map(len, self.deltas.values()))} widths)"

    def delta(self, group: str, width: int) -> float:
        full = self.groups[group]
        pts = {full: 0.0, **self.deltas.get(group, {})}
        if width >= full:
            return 0.0
        xs = sorted(pts)
        if width <= xs[0]:  # below the narrowest measured width: extend its last segment's slope
            if len(xs) < 2:
                return pts[xs[0]]
            a, b = xs[0], xs[1]
            return pts[a] + (pts[a] - pts[b]) * (a - width) / (b - a)
        for a, b in zip(xs, xs[1:], strict=False):
            if a <= width <= b:
                return pts[a] + (pts[b] - pts[a]) * (width - a) / (b - a)
        return 0.0

    def predict_ms(self, widths: Mapping[str, int]) -> float:
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise KeyError(sorted(unknown)[0])
        change = sum(self.delta(g, int(w)) for g, w in widths.items())
        pred = self.base_ms + self.scale * change
        floor = max(self.floor_ms, 0.05 * self.base_ms)
        if not math.isfinite(pred) or pred < floor:
            self.clamped += 1
            return floor
        return pred

    def candidates(self, group: str) -> list[int]:
        """The measured widths and the full width; with ``grid`` also the width grid's multiples of 8 (16, ...)
        at or above the narrowest measured width's half, priced by interpolation between measured widths."""
        if group not in self.groups:
            raise KeyError(group)
        full, measured = self.groups[group], set(self.deltas.get(group, {}))
        out = {*measured, full}
        if self.grid and measured:
            from benchmarks.latency_table import width_grid

            out |= {w for w in width_grid(full) if w >= min(measured) / 2}
        return sorted(out)

    def calibrate(self, predicted_ms: float, measured_ms: float) -> float:
        """Re-fit ``scale`` to one pruned model's measured p50 (:func:`edgetl.prune.budget.rescale_change`)."""
        from edgetl.prune.budget import rescale_change

        self.scale = rescale_change(self.scale, self.base_ms, predicted_ms, measured_ms)
        self.calibrations.append({"predicted_ms": predicted_ms, "measured_ms": measured_ms, "scale": self.scale})
        return self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "in-situ", "grid": self.grid, "base_ms": self.base_ms, "window_base_ms": self.window_base_ms,
                "groups": dict(self.groups), "scale": self.scale, "floor_ms": self.floor_ms,
                "deltas": {g: {str(w): v for w, v in sorted(d.items())} for g, d in self.deltas.items()},
                "calibrations": list(self.calibrations), "clamped": self.clamped}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InSituModel:
        try:
            return cls(base_ms=float(d["base_ms"]), window_base_ms=float(d["window_base_ms"]),
                       groups={k: int(v) for k, v in d["groups"].items()},
                       deltas={g: {int(w): float(v) for w, v in x.items()} for g, x in d["deltas"].items()},
                       scale=float(d.get("scale", 1.0)), floor_ms=float(d.get("floor_ms", 0.0)),
                       grid=bool(d.get("grid", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not an in-situ latency model ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- groups and surgery
def prunable_groups(model, input_shape: Sequence[int]) -> dict[str, int]:
    """The groups edgetl's pruner scores (root layer name -> channels), output layers excluded as it does."""
    import torch

    from edgetl.prune.config import PruneConfig
    from edgetl.prune.surgery import _build_graph, _channel_groups, _ignored_modules

    example = torch.zeros((1, *input_shape))
    dg = _build_graph(model, example)
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for group in dg.get_all_groups(ignored_layers=_ignored_modules(model, PruneConfig(), example),
                                   root_module_types=[torch.nn.modules.conv._ConvNd, torch.nn.Linear]):
        root = group[0].dep.target.module
        if id(root) not in names or _channel_groups(dg, group) != 1:
            continue  # grouped convolutions are left to the isolated table
        out[names[id(root)]] = int(root.out_channels if hasattr(root, "out_channels") else root.out_features)
    return out


def prune_groups_to(model, input_shape: Sequence[int], widths: Mapping[str, int]):
    """A copy of ``model`` with each named group cut to its width (the first channels kept: latency does not
    depend on which channels go)."""
    import torch
    import torch_pruning as tp

    from edgetl.prune.surgery import _build_graph

    m = copy.deepcopy(model).eval()
    dg = _build_graph(m, torch.zeros((1, *input_shape)))
    mods = dict(m.named_modules())
    for name, w in widths.items():
        root = mods[name]
        conv = isinstance(root, torch.nn.modules.conv._ConvNd)
        full = root.out_channels if conv else root.out_features
        if w >= full:
            continue
        handler = tp.prune_conv_out_channels if conv else tp.prune_linear_out_channels
        group = dg.get_pruning_group(root, handler, list(range(int(w), full)))
        if not dg.check_pruning_group(group):
            raise ModelError(f"group {name!r} cannot be cut to {w} channels")
        group.prune()
    return m


def group_widths(full: int, *, fractions: Sequence[float] = (0.25, 0.5, 0.75), step: int = 8) -> list[int]:
    """Widths to time a group at: the fractions of ``full`` rounded to multiples of ``step`` (at least one step)."""
    ws = {max(step, int(round(full * f / step)) * step) for f in fractions}
    return sorted(w for w in ws if w < full)


# --------------------------------------------------------------------------- build
def build_insitu(model, input_shape: Sequence[int], *, deploy: Callable[[Any], Any],
                 time: Callable[[list[Any]], list[float]], fractions: Sequence[float] = (0.25, 0.5, 0.75),
                 step: int = 8, groups: Mapping[str, int] | None = None, log: Callable[[str], None] | None = None,
                 ) -> InSituModel:
    """Measure every group's in-situ deltas. ``deploy(torch_model)`` returns what ``time`` runs (e.g. the
    int8 IR, compiled); ``time(deployed_list)`` returns each one's p50 ms, timed together (interleaved, in one
    quiet window: the caller holds it). Deploying happens before any timing, so training-free CPU work stays
    outside the window if ``time`` opens it."""
    groups = dict(groups) if groups is not None else prunable_groups(model, input_shape)
    plan = [(None, None)] + [(g, w) for g, full in groups.items() for w in group_widths(full, fractions=fractions,
                                                                                        step=step)]
    deployed = []
    for i, (g, w) in enumerate(plan):
        if log and i % 10 == 0:
            log(f"in-situ: deploying {i + 1}/{len(plan)}")
        m = model if g is None else prune_groups_to(model, input_shape, {g: w})
        deployed.append(deploy(m))
    times = time(deployed)
    base = times[0]
    deltas: dict[str, dict[int, float]] = {}
    for (g, w), t in zip(plan[1:], times[1:], strict=True):
        deltas.setdefault(g, {})[w] = t - base
    return InSituModel(base_ms=base, window_base_ms=base, groups=groups, deltas=deltas, grid=len(fractions) < 3)


class OpenVinoInt8:
    """The deployment the S1-S3 targets are about: edgetl's OpenVINO IR export, NNCF int8 by edgetl's own call
    (:func:`edgetl.quantize.openvino.quantize_ov`, auto preset) on a small calibration batch (the kernels, hence
    the latency, do not depend on the calibration values), compiled as the harness compiles it (f32 hint for the
    float ops, latency hint, ``threads``, one stream)."""

    def __init__(self, spec, calib, threads: int | None, work) -> None:
        import openvino as ov

        self.core, self.spec, self.calib, self.threads, self.work, self.n = ov.Core(), spec, calib, threads, work, 0

    def ir(self, model):
        from pathlib import Path

        from edgetl.artifact import Artifact, Format
        from edgetl.quantize.openvino import quantize_ov
        from exporters.openvino import export_openvino

        self.n += 1
        art = export_openvino(Artifact(format=Format.TORCH, model=model.eval(), input_spec=self.spec, labels=()),
                              Path(self.work) / f"m{self.n}.xml")
        q, _ = quantize_ov(self.core.read_model(str(art.path)), self.calib, preset="auto")
        return q

    __call__ = ir

    def compile(self, q, *, perf: bool = False):
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            cfg |= {"INFERENCE_NUM_THREADS": int(self.threads), "NUM_STREAMS": "1"}
        if perf:
            cfg["PERF_COUNT"] = True
        return self.core.compile_model(q, "CPU", cfg).create_infer_request()

    def time(self, irs: Sequence[Any], *, rounds: int = 5, calls: int = 20) -> list[float]:
        """p50 ms of each IR, compiled and timed in interleaved rounds (the caller holds the quiet window)."""
        import numpy as np

        from benchmarks.latency_table import TimingConfig
        from benchmarks.layer_timing import time_interleaved

        x = np.random.default_rng(1).standard_normal((1, *self.spec.shape)).astype(np.float32)
        reqs = [self.compile(q) for q in irs]
        fns = [(lambda r=r: r.infer({0: x}, share_inputs=True)) for r in reqs]
        return time_interleaved(fns, TimingConfig(calls=calls, rounds=rounds, warmup=5))
