"""Was this measurement alone on the machine? CPU time of this process against wall time, and what the other
processes used meanwhile (``/proc/stat``), for one timed block.

A block is *contended* when other processes used more than ``others_cores`` cores while it ran, or when this
process got less than ``min_cpu_share`` of the wall time on the CPU (it was preempted: its calls waited for a
core, so their latency is the scheduler's, not the model's). Both figures are kept with every round so a reader
can judge; the thresholds are :class:`ContentionRule`.

Example::

    before = snapshot()
    ...  # timed calls
    load = between(before, snapshot())
    load.others_cores, load.cpu_per_wall, ContentionRule().contended(load)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError

__all__ = ["BlockLoad", "ContentionRule", "Snapshot", "between", "snapshot"]


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    process_cpu_s: float
    machine_busy_s: float | None  # None where /proc/stat is not readable (macOS)


def _machine_busy_s() -> float | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is already in user


def snapshot() -> Snapshot:
    t = os.times()
    return Snapshot(wall_s=time.perf_counter(), process_cpu_s=t.user + t.system, machine_busy_s=_machine_busy_s())


@dataclass(frozen=True)
class BlockLoad:
    """CPU use during one timed block."""

    wall_s: float
    cpu_s: float  # this process (all its threads)
    others_cores: float | None  # cores' worth of CPU the other processes used; None where unknown

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_per_wall": round(self.cpu_per_wall, 3)}


def between(a: Snapshot, b: Snapshot) -> BlockLoad:
    wall = max(b.wall_s - a.wall_s, 1e-9)
    cpu = max(b.process_cpu_s - a.process_cpu_s, 0.0)
    others = None
    if a.machine_busy_s is not None and b.machine_busy_s is not None:
        others = max(0.0, ((b.machine_busy_s - a.machine_busy_s) - cpu) / wall)
    return BlockLoad(wall_s=wall, cpu_s=cpu, others_cores=others)


@dataclass(frozen=True)
class ContentionRule:
    """When a timed block counts as contended.

    ``others_cores``: other processes used more than this many cores (0.25: a quarter of a core, the level at
    which 2-thread timings on a 2-core machine already moved by more than their own spread).
    ``min_cpu_share``: this process was on a CPU less than this fraction of the wall time. Only meaningful on
    CPU runtimes, where the calling thread computes or spins for the whole call; off (0) for accelerators.
    ``/proc/stat`` counts in clock ticks (10 ms): blocks shorter than ``min_block_s`` are judged on the process
    share only.
    """

    others_cores: float = 0.25
    min_cpu_share: float = 0.75
    min_block_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("others_cores", "min_cpu_share", "min_block_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"contention {name} must not be negative, got {getattr(self, name)}")

    def reasons(self, load: BlockLoad) -> list[str]:
        out = []
        if load.others_cores is not None and load.wall_s >= self.min_block_s and load.others_cores > self.others_cores:
            out.append(f"other processes used {load.others_cores:.2f} cores")
        if self.min_cpu_share and load.cpu_per_wall < self.min_cpu_share:
            out.append(f"this process was on a CPU {100 * load.cpu_per_wall:.0f} % of the time")
        return out

    def contended(self, load: BlockLoad) -> bool:
        return bool(self.reasons(load))


# Measured here (2 cores, torch 2.14.1 eager, resnet18 at 64x64, batch 1, 2 threads, 3 s each, under
# flock; the "quiet" machine was shared with other sessions): p50 quiet / beside two `yes` processes:
#   OpenMP default (spinning)      5.6 ms / 1152 ms   (spinning threads preempted: 200x slower)
#   OMP_WAIT_POLICY=PASSIVE        7.1 ms /   19 ms
#   GOMP_SPINCOUNT=10000           8.5 ms /   20 ms
#   1 thread, default              8.6 ms /   10 ms (p90 21 ms)
# Spinning wins on an idle machine and collapses on a busy one; PASSIVE holds up. So the policy is chosen
# from the machine's load before torch starts its thread pool, and recorded with every result.
BUSY_CORES = 0.25


def choose_omp_wait_policy(*, sample_s: float = 0.25) -> dict[str, Any]:
    """Set ``OMP_WAIT_POLICY`` for this process before torch loads OpenMP: ``PASSIVE`` when other processes
    keep the CPU busy, the default (spinning) on an idle machine. A user's own setting is kept.

    Returns what was decided and why; the harness stores it with each result (``env["omp_wait_policy"]``).
    """
    import sys

    if "OMP_WAIT_POLICY" in os.environ:
        return {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "why": "set by the user"}
    if "torch" in sys.modules:
        return {"omp_wait_policy": "default", "why": "torch was already loaded: OpenMP's policy is fixed"}
    a = snapshot()
    time.sleep(sample_s)
    load = between(a, snapshot())
    if load.others_cores is None:
        return {"omp_wait_policy": "default", "why": "machine load unknown (no /proc/stat)"}
    if load.others_cores > BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return {"omp_wait_policy": "PASSIVE", "others_cores": round(load.others_cores, 2),
                "why": "other processes were busy: spinning OpenMP threads would be preempted"}
    return {"omp_wait_policy": "default", "others_cores": round(load.others_cores, 2),
            "why": "idle machine: spinning OpenMP threads are fastest"}
