"""Benchmark feeds for any model: every input by name, from ``--data`` read by the model's contract, at the shape
``--opt-shape`` says; a runner wrapper that times ``run_named`` on them.

The harness (:mod:`benchmarks.timing`) times ``runner.run(x)`` on prepared inputs. For a model of several inputs (a recurrent state, a
sample rate) or a dynamic H x W, :func:`bench_inputs` gives the feeds (dicts by input name) and
:func:`feed_runner` wraps the runtime so that ``run(feed)`` is one ``run_named`` call (what is timed: the
runtime's own call with every input) returning the first metric output with its batch axis first, so the
harness's batch check and finiteness check look at a real output. A classifier with an input spec goes through
:func:`benchmarks.inputs.real_inputs` and its runner unchanged.

Nothing is guessed: an integer input (a sample rate) comes from ``--data`` or the bench is refused; without data,
float inputs are standard normal at the concrete (``--opt-shape``) shape and the result's ``inputs`` says so.

Example::

    art = prepare(load_model("vad.onnx"), parse_flags(), data="vad.npz")
    feeds, origin = bench_inputs(art, batch=1, count=8)      # origin "data:vad.npz[0:8] (audio 1x256 ...)"
    runner = feed_runner(open_runner(art), art)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import Artifact
from edgetl.errors import ConfigError, DataError

__all__ = ["FeedRunner", "RemoteFeeds", "bench_inputs", "feed_runner", "input_shape", "prepare", "remote_feeds"]

_DATA_KEY = "bench_data"  # artifact.extra: where the feeds come from (a path or module:function)


def prepare(art: Artifact, flags: Any, *, data: str | None) -> Artifact:
    """``art`` with its contract completed by ``flags`` (checked against the file: one line before any timing)
    and the data its feeds come from. A classifier without flags or data is returned unchanged."""
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for

    said = bool(flags.inputs or flags.opt_shapes or flags.min_shapes or flags.max_shapes or flags.roles or flags.task)
    if art.input_spec is not None and not said and data is None:
        return art
    from edgetl.data import BUILTIN_DATASETS

    if data in BUILTIN_DATASETS:
        raise ConfigError(f"--data {data}: bench --data takes real inputs read by the model's contract (an .npz named "
                          "after the inputs, an image folder, module:function); a classifier is timed on the dataset "
                          "it records with --inputs data")
    contract = contract_for(art, flags)
    require(contract, shapes=True)
    art.contract = contract
    art.input_spec = None  # fed by its contract, whatever spec a sidecar recorded
    art.extra = {**art.extra, _DATA_KEY: data}
    return art


def _by_contract(art: Artifact) -> bool:
    return art.input_spec is None and art.contract is not None


def _opt_mismatch(contract, sample: Mapping[str, np.ndarray]) -> str | None:
    for t in contract.inputs:
        if t.opt_shape is not None and tuple(np.asarray(sample[t.name]).shape) != tuple(t.opt_shape):
            return (f"--data gives {t.name} {'x'.join(map(str, np.asarray(sample[t.name]).shape))} but --opt-shape says "
                    f"{'x'.join(map(str, t.opt_shape))}; give data of the size to time, or drop --opt-shape")
    return None


def _feeds_from_data(art: Artifact, data: str, count: int) -> tuple[list[dict[str, np.ndarray]], str]:
    from edgetl.inputs import load_inputs

    got = load_inputs(data, contract=art.contract, limit=count)
    why = _opt_mismatch(art.contract, got.samples[0])
    if why:
        raise DataError(why)
    return [dict(s) for s in got.samples], f"data:{data}[0:{len(got)}]"


def _synthetic(art: Artifact, count: int) -> tuple[list[dict[str, np.ndarray]], str]:
    from edgetl.contract_shapes import example_inputs

    feeds = [example_inputs(art.contract, seed=i) for i in range(count)]  # ints refused: they need --data
    return feeds, "synthetic: standard normal (no --data)"


def bench_inputs(art: Artifact, *, batch: int = 1, count: int = 8, source: Any = "auto"
                 ) -> tuple[list[Any], str]:
    """``count`` inputs to time and where they came from: feeds by input name for a model by its contract, else
    :func:`benchmarks.inputs.real_inputs`' image batches."""
    if not _by_contract(art):
        from benchmarks.inputs import real_inputs

        return real_inputs(art, batch=batch, count=count, source=source)
    from edgetl.inputs import batches

    data = art.extra.get(_DATA_KEY)
    samples, origin = _feeds_from_data(art, data, count * batch) if data else _synthetic(art, count * batch)
    reps = -(-count * batch // len(samples))
    feeds = list(batches((samples * reps)[: count * batch], art.contract, batch_size=batch))
    shapes = ", ".join(f"{k} {'x'.join(map(str, np.shape(v))) or 'scalar'}" for k, v in feeds[0].items())
    return feeds, f"{origin} ({shapes})"


def input_shape(art: Artifact) -> Any:
    """What a result records as the input shape: the spec's C,H,W, else every input's shape by name."""
    if art.input_spec is not None:
        return list(art.input_spec.shape)
    return {t.name: [d for d in (t.opt_shape or t.shape or ())] for t in art.contract.inputs}


class FeedRunner:
    """A runtime whose ``run(feed)`` is ``run_named(feed)``; returns the first metric output, batch axis first."""

    def __init__(self, inner: Any, contract) -> None:
        self.inner, self.contract = inner, contract
        self.fixed_batch = None  # batch axes are where the contract's layouts say, not always axis 0

    def run(self, feed):
        if not isinstance(feed, Mapping):
            raise ConfigError("a model by its contract is fed by input name; bench it with --data or --input")
        out = self.inner.run_named(dict(feed))
        first = next((o for o in self.contract.metric_outputs() if o.name in out), None)
        value = np.asarray(out[first.name] if first is not None else next(iter(out.values())))
        axis = first.axis("N", 0) if first is not None else 0
        return np.moveaxis(value, axis, 0) if value.ndim else value.reshape(1)

    def __getattr__(self, name: str) -> Any:  # synchronize, describe, close, own_clock, last_latency_ms
        return getattr(self.inner, name)


@dataclass(frozen=True)
class RemoteFeeds:
    """What a board needs to time models by their contract: the contract flags to repeat there, and the real feeds
    packed here as an ``.npz`` named after the inputs (None: float inputs made up there, as locally)."""

    args: tuple[str, ...]  # --input/--opt-shape words for the board's edgetl
    npz: Path | None
    origin: str | None  # where the packed feeds came from here
    samples: int = 0


def remote_feeds(paths: Sequence[str | Path], *, inputs: Sequence[str] = (), opt_shapes: Sequence[str] = (),
                 data: str | None, folder: Path, count: int) -> RemoteFeeds | None:
    """Check every artifact's contract here (a contradiction or a missing fact is one line before connecting)
    and pack ``count`` real samples of ``data`` (any form: an .npz, an image folder, ``module:function``) into
    ``folder/feeds.npz``, one array per input with samples on axis 0, the form ``--data`` reads on the board.
    None when no contract flag and no data were given (a classifier benched as before)."""
    from edgetl.contract import parse_flags
    from edgetl.inputs import load_inputs
    from edgetl.models import load_model

    if not (inputs or opt_shapes or data):
        return None
    flags = parse_flags(inputs=tuple(inputs), opt_shapes=tuple(opt_shapes))
    arts = [prepare(load_model(str(p)), flags, data=data) for p in paths]
    args = tuple(w for flag, vals in (("--input", inputs), ("--opt-shape", opt_shapes)) for v in vals for w in (flag, v))
    if data is None:
        for art in arts:
            _synthetic(art, 1)  # an integer input cannot be made up, here or there: refused before connecting
        return RemoteFeeds(args=args, npz=None, origin=None)
    got = load_inputs(data, contract=arts[0].contract, limit=count)
    for art in arts:
        why = _opt_mismatch(art.contract, got.samples[0])
        if why:
            raise DataError(why)
        if art.contract.input_names != arts[0].contract.input_names:
            raise ConfigError(f"{art.name} takes inputs {', '.join(art.contract.input_names)} but {arts[0].name} takes "
                              f"{', '.join(arts[0].contract.input_names)}; bench models of the same inputs together")
    npz = folder / "feeds.npz"
    np.savez(npz, **{n: np.stack([np.asarray(s[n]) for s in got.samples]) for n in arts[0].contract.input_names})
    return RemoteFeeds(args=args, npz=npz, origin=got.origin, samples=len(got))


def feed_runner(runner: Any, art: Artifact) -> Any:
    """``runner`` wrapped in a :class:`FeedRunner` when ``art`` is fed by its contract, else unchanged."""
    return FeedRunner(runner, art.contract) if _by_contract(art) else runner
