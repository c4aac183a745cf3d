"""A per-device latency model: each prunable layer's latency as a function of its kept channels, measured.

For every convolution and linear layer of a model (the layers torch-pruning's dependency graph couples into
prunable groups, named by their root layer as :mod:`edgetl.prune.pruner` names them) a small one-layer graph
with the layer's own kernel, stride, padding, groups and input size is built and timed on the target runtime
at a grid of output widths (input full) and of input widths (output full). The grid holds the multiples of
8, 16 or 32 (the staircase: aligned widths are often faster than their neighbours) and the full width.
A layer's latency at (input c_in, output c_out) is modelled as ``full * r_out(c_out) * r_in(c_in)``
(each ratio read off its measured curve; a depthwise convolution has one curve, its channels), and the
model's latency as the measured full-model latency minus what each layer saves. Activations and
normalisations fused into the convolution by the runtime are not timed separately; element-wise work between
layers scales with the channels too and is not modelled (the CLI measures the pruned model and iterates).

What it gets wrong (:mod:`benchmarks.latency_insitu` has the measured figures): an isolated layer pays its own
quantize/requantize and reorders, fused away in the full graph, so its savings are inflated (pruned int8 Lite0
measured ~2x the prediction). So predictions are clamped to :attr:`LatencyTable.min_ms` and
:meth:`LatencyTable.calibrate` re-fits the predicted change from measured/predicted feedback.

Points are cached on disk per device profile, runtime and version, threads, precision and layer signature
(kind, channels, kernel, stride, padding, groups, input size), so a second build of the same model (or of any
model sharing layers) measures nothing.

Example::

    table = build_latency_table(model, (3, 64, 64), runtime="openvino", threads=2, device="x86-cpu")
    table.predict_ms({"features.0.conv": 16}), table.candidates("features.0.conv"), table.measured_points
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.latency_cache import CACHE_VERSION, cache_path, default_cache_dir, load_cache, model_key
from benchmarks.layer_timing import Backend, time_interleaved
from edgetl.errors import ConfigError, ModelError

__all__ = ["RUNTIMES", "LatencyTable", "LayerEntry", "LayerSignature", "TimingConfig", "build_latency_table",
           "table_summary", "width_grid"]

RUNTIMES = ("onnxruntime", "openvino", "torch")
PRECISIONS = ("fp32", "int8")


def width_grid(channels: int, *, max_points: int = 12, base: int = 8) -> list[int]:
    """Widths measured for a layer of ``channels``: multiples of 8 (16, 32, ... when there are many), and full."""
    step = base
    while channels / step > max_points:
        step *= 2
    return sorted({*range(step, channels, step), channels})


@dataclass(frozen=True)
class LayerSignature:
    """What a layer's latency depends on, besides the widths: the cache key of its measured points."""

    kind: str  # conv, dwconv or linear
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: begins then ends
    dilation: tuple[int, ...] = ()
    groups: int = 1
    in_hw: tuple[int, ...] = ()

    def key(self) -> str:
        return (f"{self.kind}:{self.in_channels}->{self.out_channels}:k{list(self.kernel)}:s{list(self.stride)}"
                f":p{list(self.pads)}:d{list(self.dilation)}:g{self.groups}:in{list(self.in_hw)}")


@dataclass
class LayerEntry:
    """One layer: its signature, the groups owning its output and input channels, its measured curves."""

    name: str
    sig: LayerSignature
    out_group: str | None
    in_group: str | None
    full_ms: float = 0.0  # compute time at full width: measured minus the runtime's per-call floor
    floor_ms: float = 0.0
    out_curve: dict[int, float] = field(default_factory=dict)  # output width -> ms (input full)
    in_curve: dict[int, float] = field(default_factory=dict)  # input width -> ms (output full)

    def ms(self, c_in: int, c_out: int) -> float:
        """Compute time (per-call floor excluded) at the given input and output widths."""
        if self.full_ms <= 0:
            return 0.0
        r_out = self._net(self.out_curve, c_out) / self.full_ms
        if self.sig.kind == "dwconv" or not self.in_curve:
            return self.full_ms * r_out
        return self.full_ms * r_out * (self._net(self.in_curve, c_in) / self.full_ms)

    def _net(self, curve: Mapping[int, float], w: int) -> float:
        return max(0.0, _interp(curve, w) - self.floor_ms)


def _interp(curve: Mapping[int, float], w: int) -> float:
    if w in curve:
        return curve[w]
    xs = sorted(curve)
    if w <= xs[0]:
        return curve[xs[0]] * w / xs[0]
    for a, b in zip(xs, xs[1:], strict=False):
        if a < w < b:
            return curve[a] + (curve[b] - curve[a]) * (w - a) / (b - a)
    return curve[xs[-1]]


@dataclass(frozen=True)
class TimingConfig:
    """How each point is timed: calls per round, interleaved rounds over the widths, warm-up calls."""

    calls: int = 20
    rounds: int = 3
    warmup: int = 3

    def __post_init__(self) -> None:
        for k in ("calls", "rounds"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be at least 1, got {getattr(self, k)}")


@dataclass
class LatencyTable:
    """The latency model of one model on one runtime; implements :class:`edgetl.prune.budget.LatencyModel`."""

    device: str
    runtime: str
    runtime_version: str
    threads: int | None
    precision: str
    input_shape: tuple[int, ...]
    base_ms: float
    floor_ms: float
    layers: list[LayerEntry]
    groups: dict[str, int]  # group name -> channels at full width
    measured_points: int = 0
    cached_points: int = 0
    cache_file: str | None = None
    change_scale: float = 1.0  # measured/predicted feedback on the predicted change (calibrate)
    calibrations: list[dict[str, float]] = field(default_factory=list)
    clamped: int = 0  # predictions raised to the floor (the savings modelled exceeded what a model can save)

    def __post_init__(self) -> None:
        self._by_out: dict[str, list[LayerEntry]] = {}
        self._by_in: dict[str, list[LayerEntry]] = {}
        for e in self.layers:
            if e.out_group:
                self._by_out.setdefault(e.out_group, []).append(e)
            if e.in_group and e.sig.kind != "dwconv":
                self._by_in.setdefault(e.in_group, []).append(e)
        self._staircase: dict[str, list[int]] = {}

    def describe(self) -> str:
        return (f"latency-table({self.device}, {self.runtime} {self.runtime_version}, threads {self.threads}, "
                f"{self.precision}, input {list(self.input_shape)})")

    def _widths(self, e: LayerEntry, widths: Mapping[str, int]) -> tuple[int, int]:
        c_out = widths.get(e.out_group, e.sig.out_channels) if e.out_group else e.sig.out_channels
        if e.sig.kind == "dwconv":
            return c_out, c_out
        c_in = widths.get(e.in_group, e.sig.in_channels) if e.in_group else e.sig.in_channels
        return c_in, c_out

    def predict_ms(self, widths: Mapping[str, int]) -> float:
        """Predicted latency with the named groups at the given widths (the others full)."""
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise KeyError(sorted(unknown)[0])
        touched = {id(e): e for g in widths for e in (*self._by_out.get(g, ()), *self._by_in.get(g, ()))}
        saved = 0.0
        for e in touched.values():
            c_in, c_out = self._widths(e, widths)
            saved += e.full_ms - e.ms(c_in, c_out)
        pred = self.base_ms - self.change_scale * saved
        floor = self.min_ms
        if not math.isfinite(pred) or pred < floor:  # never a negative or absurd figure: the floor, counted
            self.clamped += 1
            return floor
        return pred

    @property
    def min_ms(self) -> float:
        """The lowest prediction: the per-call floor, at least 5 % of the base (isolated savings can exceed it)."""
        return max(self.floor_ms, 0.05 * self.base_ms)

    def calibrate(self, predicted_ms: float, measured_ms: float) -> float:
        """Re-fit the change scale to one pruned model's measured p50 (:func:`edgetl.prune.budget.rescale_change`)."""
        from edgetl.prune.budget import rescale_change

        self.change_scale = rescale_change(self.change_scale, self.base_ms, predicted_ms, measured_ms)
        self._staircase.clear()
        self.calibrations.append({"predicted_ms": predicted_ms, "measured_ms": measured_ms, "scale": self.change_scale})
        return self.change_scale

    def candidates(self, group: str) -> list[int]:
        """The group's measured widths, minus those no faster than a wider one (the staircase)."""
        if group not in self.groups:
            raise KeyError(group)
        if group not in self._staircase:
            full = self.groups[group]
            grid = sorted({w for e in self._by_out.get(group, ()) for w in e.out_curve} | {full})
            keep, best = [], math.inf
            for w in reversed(grid):
                pred = self.predict_ms({group: w})
                if w == full or pred < best:
                    keep.append(w)
                    best = min(best, pred)
            self._staircase[group] = sorted(keep)
        return list(self._staircase[group])

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "runtime_version": self.runtime_version,
                "threads": self.threads, "precision": self.precision, "input_shape": list(self.input_shape),
                "base_ms": self.base_ms, "floor_ms": self.floor_ms, "groups": dict(self.groups),
                "measured_points": self.measured_points, "cached_points": self.cached_points,
                "cache_file": self.cache_file, "change_scale": self.change_scale,
                "calibrations": list(self.calibrations), "clamped": self.clamped,
                "layers": [{"name": e.name, "signature": e.sig.key(), "sig": dataclasses.asdict(e.sig),
                            "out_group": e.out_group, "in_group": e.in_group, "full_ms": e.full_ms,
                            "floor_ms": e.floor_ms,
                            "out_curve": {str(k): v for k, v in sorted(e.out_curve.items())},
                            "in_curve": {str(k): v for k, v in sorted(e.in_curve.items())}} for e in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        """The table again from :meth:`to_dict` (e.g. measured on a board and sent back over SSH)."""
        try:
            layers = [LayerEntry(name=x["name"], sig=LayerSignature(**{k: tuple(v) if isinstance(v, list) else v
                                                                      for k, v in x["sig"].items()}),
                                 out_group=x["out_group"], in_group=x["in_group"], full_ms=float(x["full_ms"]),
                                 floor_ms=float(x.get("floor_ms", d.get("floor_ms", 0.0))),
                                 out_curve={int(k): float(v) for k, v in x["out_curve"].items()},
                                 in_curve={int(k): float(v) for k, v in x["in_curve"].items()}) for x in d["layers"]]
            return cls(device=d["device"], runtime=d["runtime"], runtime_version=d["runtime_version"],
                       threads=d["threads"], precision=d["precision"], input_shape=tuple(d["input_shape"]),
                       base_ms=float(d["base_ms"]), floor_ms=float(d["floor_ms"]), layers=layers,
                       groups={k: int(v) for k, v in d["groups"].items()},
                       measured_points=int(d.get("measured_points", 0)),
                       cached_points=int(d.get("cached_points", 0)), cache_file=d.get("cache_file"),
                       change_scale=float(d.get("change_scale", 1.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a latency table ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- the model's layers
def _layer_shapes(model, input_shape) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    import torch
    import torch.nn as nn

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            def hook(mod, inp, out, _n=name):
                shapes[_n] = (tuple(inp[0].shape), tuple(out.shape))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _signature(m, in_shape, out_shape) -> LayerSignature:
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        if len(in_shape) != 2:
            raise ModelError(f"linear layer on a {len(in_shape)}-d input {list(in_shape)}: the latency table "
                             "models linear layers on (batch, features) inputs only")
        return LayerSignature("linear", m.in_features, m.out_features)
    if len(in_shape) != 4:
        raise ModelError(f"the latency table models 2-d convolutions; got a {type(m).__name__} on {list(in_shape)}")
    k, s, d = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
    pads_begin, pads_end = [], []
    for i in range(2):  # the padding that reproduces the output size, however the module pads (static/same/explicit)
        total = (out_shape[2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - in_shape[2 + i]
        total = max(0, total)
        pads_begin.append(total // 2)
        pads_end.append(total - total // 2)
    kind = "dwconv" if m.groups == m.in_channels == m.out_channels and m.groups > 1 else "conv"
    return LayerSignature(kind, m.in_channels, m.out_channels, k, s, (*pads_begin, *pads_end), d, m.groups,
                          tuple(in_shape[2:]))


def _group_owners(model, input_shape) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """(layer -> group owning its output channels, layer -> group owning its input channels, group -> width)."""
    import torch
    import torch.nn as nn
    import torch_pruning as tp

    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros((1, *input_shape)))
    except Exception as e:  # noqa: BLE001 - tracing failures come in every exception type
        raise ModelError(f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__}: {e}") from None
    names = {id(m): n for n, m in model.named_modules()}
    out_of, in_of, widths = {}, {}, {}
    for group in dg.get_all_groups(root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root = group[0].dep.target.module
        gname = names.get(id(root))
        if gname is None:
            continue
        widths[gname] = int(root.out_channels if isinstance(root, nn.modules.conv._ConvNd) else root.out_features)
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or id(m) not in names:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                out_of.setdefault(names[id(m)], gname)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                in_of.setdefault(names[id(m)], gname)
    return out_of, in_of, widths


# --------------------------------------------------------------------------- build
def build_latency_table(model, input_shape: Sequence[int], *, runtime: str, threads: int | None = None,
                        device: str = "local", precision: str = "fp32", cache_dir: str | Path | None = None,
                        timing: TimingConfig | None = None, max_points: int = 12,
                        use_cache: bool = True, base_ms: float | None = None) -> LatencyTable:
    """Measure (or read from the cache) every layer's latency curve and the full model's latency.

    ``device`` names the device profile (part of the cache key with the runtime, its version, the threads and
    the precision). ``precision``: ``fp32``, or ``int8`` on ONNX Runtime and OpenVINO (QDQ one-layer graphs).
    ``base_ms``: the full model's latency as deployed, measured by the caller (then not measured here); int8
    needs it, since the deployed int8 model comes from a calibrated quantizer this module does not run.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"the latency table measures on {', '.join(RUNTIMES)}; got runtime {runtime!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"the latency table measures {' or '.join(PRECISIONS)} layers; got {precision!r}")
    if precision == "int8" and runtime == "torch":
        raise ConfigError("int8 latency tables are measured on onnxruntime or openvino, not torch")
    if precision == "int8" and base_ms is None:
        raise ConfigError("an int8 latency table needs base_ms: the deployed int8 model's measured p50")
    input_shape = tuple(int(s) for s in input_shape)
    timing = timing or TimingConfig()
    model = model.eval()
    backend = Backend(runtime, threads, precision)
    with backend.torch_settings():
        return _build(model, input_shape, backend, device=device, cache_dir=cache_dir, timing=timing,
                      max_points=max_points, use_cache=use_cache, base_ms=base_ms)


def _build(model, input_shape, backend: Backend, *, device, cache_dir, timing, max_points, use_cache, base_ms):
    runtime, threads, precision = backend.runtime, backend.threads, backend.precision
    shapes = _layer_shapes(model, input_shape)
    out_of, in_of, group_widths = _group_owners(model, input_shape)
    modules = dict(model.named_modules())
    entries = [LayerEntry(name, _signature(modules[name], *shapes[name]), out_of.get(name), in_of.get(name))
               for name in shapes]
    cache_file = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), device, runtime,
                             backend.version, threads, precision)
    cache = load_cache(cache_file) if use_cache else {"version": CACHE_VERSION, "points": {}, "models": {}}
    measured = cached = 0
    for e in entries:
        key = e.sig.key()
        stored = cache["points"].get(key)
        if stored is not None:
            e.out_curve = {int(k): float(v) for k, v in stored["out"].items()}
            e.in_curve = {int(k): float(v) for k, v in stored["in"].items()}
            cached += len(e.out_curve) + len(e.in_curve)
        else:
            e.out_curve, e.in_curve = _measure_layer(backend, e.sig, timing, max_points)
            measured += len(e.out_curve) + len(e.in_curve)
            cache["points"][key] = {"out": {str(k): v for k, v in e.out_curve.items()},
                                    "in": {str(k): v for k, v in e.in_curve.items()}}
    if "floor_ms" in cache:
        floor = float(cache["floor_ms"])
        cached += 1
    else:  # the per-call cost of a trivial graph: what every isolated layer timing carries besides its compute
        floor = time_interleaved([backend.layer(LayerSignature("conv", 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1,
                                                                (1, 1)), 1, 1)], timing)[0]
        cache["floor_ms"] = floor
        measured += 1
    for e in entries:
        e.floor_ms = floor
        e.full_ms = max(0.0, e.out_curve[e.sig.out_channels] - floor)
    mkey = model_key(model, input_shape)
    if base_ms is not None:
        base = float(base_ms)
    elif mkey in cache["models"]:
        base = float(cache["models"][mkey])
        cached += 1
    else:
        base = time_interleaved([backend.model(model, input_shape)], timing)[0]
        cache["models"][mkey] = base
        measured += 1
    if measured and use_cache:
        from edgetl.fileio import write_json

        write_json(cache_file, cache)
    return LatencyTable(device=device, runtime=runtime, runtime_version=backend.version, threads=threads,
                        precision=precision, input_shape=input_shape, base_ms=base, floor_ms=floor, layers=entries,
                        groups=group_widths, measured_points=measured, cached_points=cached,
                        cache_file=str(cache_file) if use_cache else None)


def _measure_layer(backend: Backend, sig: LayerSignature, timing: TimingConfig,
                   max_points: int) -> tuple[dict[int, float], dict[int, float]]:
    outs = width_grid(sig.out_channels, max_points=max_points)
    if sig.groups > 1 and sig.kind == "conv":
        outs = [w for w in outs if w % sig.groups == 0] or [sig.out_channels]
    fns = [backend.layer(sig, sig.in_channels, w) for w in outs]
    ins: list[int] = []
    if sig.kind != "dwconv":
        ins = [w for w in width_grid(sig.in_channels, max_points=max_points) if w != sig.in_channels]
        if sig.groups > 1:
            ins = [w for w in ins if w % sig.groups == 0]
        fns += [backend.layer(sig, w, sig.out_channels) for w in ins]
    times = time_interleaved(fns, timing)
    out_curve = dict(zip(outs, times[: len(outs)], strict=True))
    in_curve = dict(zip(ins, times[len(outs):], strict=True))
    if in_curve:
        in_curve[sig.in_channels] = out_curve[sig.out_channels]
    return out_curve, in_curve


def table_summary(table: LatencyTable) -> dict[str, Any]:
    """A short summary for CLI output: layers, groups, points measured and cached, base latency."""
    keys = ("device", "runtime", "runtime_version", "threads", "precision", "base_ms", "floor_ms", "measured_points",
            "cached_points", "cache_file")
    return {k: getattr(table, k) for k in keys} | {"layers": len(table.layers), "groups": len(table.groups)}
