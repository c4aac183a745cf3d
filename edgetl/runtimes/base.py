"""The runner interface shared by evaluation and the latency harness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetl.artifact import Artifact

__all__ = ["Runner", "RunnerOptions"]


@dataclass(frozen=True)
class RunnerOptions:
    threads: int | None = None  # None: the runtime's default
    device: str = "cpu"
    precision: str | None = None  # runtime-specific precision hint, e.g. OpenVINO's f32 / bf16
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Load once, then ``run`` float32 NCHW numpy batches; returns numpy logits."""

    runtime = "base"
    fixed_batch: int | None = None  # the only batch size the loaded model accepts, if it is static

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        self.artifact = artifact
        self.options = options

    def run(self, batch):  # pragma: no cover - interface
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued work; CPU runtimes return when ``run`` does."""

    def describe(self) -> dict[str, Any]:
        """What actually ran: runtime, version, threads, precision."""
        return {"runtime": self.runtime, "threads": self.options.threads}

    def close(self) -> None:
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
