"""The one interface every runtime implements: load an artifact once, then run float32 NCHW numpy batches.

What the latency harness, evaluation and the parity check need to know about a runtime is declared here, not
sniffed: ``fixed_batch`` (the only batch the loaded model accepts, ``None`` if any), ``own_clock`` (whether
``last_latency_ms``, defined only then, is the runtime's own measurement of the last call, as its C++ benchmark
tool reports it) and :meth:`Runtime.describe` (what actually ran).

Example::

    class MyRuntime(Runtime):
        runtime = "mine"
        formats = (Format.ONNX,)

        def __init__(self, artifact, options):
            super().__init__(artifact, options)
            self.session = load(artifact.path)

        def run(self, batch):
            return self.session(batch)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgetl.artifact import Artifact, Format

__all__ = ["Runner", "RunnerOptions", "Runtime", "RuntimeOptions"]


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int | None = None  # None: the runtime's default
    device: str = "cpu"
    precision: str | None = None  # runtime-specific precision hint, e.g. OpenVINO's f32 / bf16
    extra: dict[str, Any] = field(default_factory=dict)


class Runtime:
    """Load once, then ``run`` float32 NCHW numpy batches; returns numpy logits."""

    runtime: ClassVar[str] = "base"  # the name it is registered under
    formats: ClassVar[tuple[Format, ...]] = ()  # artifact formats it runs (plug-ins; built-ins: the RUNTIMES rows)
    own_clock: ClassVar[bool] = False  # True: ``last_latency_ms`` is the runtime's own latency of the last call
    fixed_batch: int | None = None  # the only batch size the loaded model accepts, if it is static

    def __init__(self, artifact: Artifact, options: RuntimeOptions) -> None:
        self.artifact = artifact
        self.options = options

    def run(self, batch):  # pragma: no cover - interface
        raise NotImplementedError

    def run_named(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Every input by name in, every output by name out (numpy). The base runs a one-input model through
        :meth:`run`, naming things after the artifact's contract; multi-input runtimes override it."""
        from edgetl.errors import ConfigError

        contract = self.artifact.contract
        in_names = contract.input_names if contract is not None else ()
        out_names = contract.output_names if contract is not None else ()
        if len(feed) != 1 or (in_names and tuple(feed) != in_names[:1]) or len(in_names) > 1:
            raise ConfigError(f"the {self.runtime} runtime runs one-input models only; this one takes "
                              f"{', '.join(in_names or tuple(feed))}")
        out = self.run(next(iter(feed.values())))
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        names = out_names if len(out_names) == len(outs) else [f"output{i}" if len(outs) > 1 else "output"
                                                             for i in range(len(outs))]
        return dict(zip(names, outs, strict=True))

    def synchronize(self) -> None:
        """Wait for queued work; CPU runtimes return when ``run`` does."""

    # A runtime with its own clock (own_clock = True) also defines ``last_latency_ms``: the runtime's own latency
    # of the last call, in ms. The base deliberately has no such attribute, so code that still asks
    # hasattr(runtime, "last_latency_ms") (as benchmarks.harness did) gets the same answer as own_clock.

    def describe(self) -> dict[str, Any]:
        """What actually ran: runtime, version, threads, precision."""
        return {"runtime": self.runtime, "threads": self.options.threads}

    def close(self) -> None:
        pass

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The names the runtimes had while they lived in benchmarks/runners.
Runner = Runtime
RunnerOptions = RuntimeOptions
