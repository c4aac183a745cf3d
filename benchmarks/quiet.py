"""Timed measurements alone on a shared machine: the quiet protocol of ``/work/wt/quiet`` in Python.

Other processes' test runs go through a wrapper that waits while ``/tmp/edgetl-quiet`` exists and then holds
``/tmp/edgetl-bench.lock`` shared. :func:`quiet_machine` asks them to wait (touches the flag), takes the lock
exclusive (so it waits for the runs already holding it shared to finish), and undoes both on exit. Hold it only
around the timing itself: minutes, not a whole suite.

``pause`` names processes of one's own (e.g. a training run started beside the suite) that are stopped
(SIGSTOP) while the machine is quiet and continued (SIGCONT) after, so they do not contend with the timing.

Example::

    with quiet_machine() as q:
        run = measure_interleaved(candidates, config)
    q.waited_s  # how long it waited for the lock
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BENCH_LOCK", "QUIET_FLAG", "Quiet", "quiet_machine", "remove_stale_flag", "set_enabled"]

QUIET_FLAG = Path(os.environ.get("EDGETL_QUIET_FLAG", "/tmp/edgetl-quiet"))
BENCH_LOCK = Path(os.environ.get("EDGETL_BENCH_LOCK", "/tmp/edgetl-bench.lock"))
_depth = 0  # how deep this process is inside quiet_machine()
_enabled = True


def set_enabled(on: bool) -> None:
    """Turn the protocol off for a run whose timings are no claim (a suite's ``--smoke``, which tests start
    under the shared lock: taking it exclusive there would wait for the test itself)."""
    global _enabled
    _enabled = bool(on)


@dataclass
class Quiet:
    """What one quiet period cost: the wait for the lock, how long it was held, the processes paused."""

    waited_s: float = 0.0
    held_s: float = 0.0
    paused: list[int] = field(default_factory=list)
    mode: str = "held"  # held (this call took the lock), nested (an outer call holds it), off (set_enabled(False))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "waited_s": round(self.waited_s, 3), "held_s": round(self.held_s, 3),
                "paused": list(self.paused)}


def _signal(pids: Iterable[int], sig: int) -> list[int]:
    done = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            done.append(pid)
        except ProcessLookupError:  # it finished: nothing to pause or continue
            pass
    return done


def remove_stale_flag(flag: Path | None = None) -> bool:
    """Remove the quiet flag when the process that wrote it is gone (killed hard); True when removed."""
    flag = Path(flag or QUIET_FLAG)
    try:
        pid = int(flag.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):  # absent, or written by a tool that records no pid
        return False
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        flag.unlink(missing_ok=True)
        return True
    except PermissionError:  # alive, another user's
        return False


@contextlib.contextmanager
def quiet_machine(*, flag: Path | None = None, lock: Path | None = None,
                  pause: Iterable[int] = ()) -> Iterator[Quiet]:
    """Hold the machine for a timed measurement (see the module docstring); re-entrant within a process."""
    global _depth
    flag, lock = Path(flag or QUIET_FLAG), Path(lock or BENCH_LOCK)
    q = Quiet()
    if not _enabled or _depth:  # off, or held by this process (a second flock would wait for ourselves)
        q.mode = "off" if not _enabled else "nested"
        _depth += 1
        try:
            yield q
        finally:
            _depth -= 1
        return
    flag.write_text(f"{os.getpid()}\n")  # who asked: a flag left by a dead process can be told from a live one
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    paused: list[int] = []
    try:
        t0 = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        t1 = time.monotonic()
        q.waited_s = t1 - t0
        paused = _signal([int(p) for p in pause if int(p) != os.getpid()], signal.SIGSTOP)
        q.paused = paused
        _depth = 1
        try:
            yield q
        finally:
            _depth = 0
            _signal(paused, signal.SIGCONT)
            q.held_s = time.monotonic() - t1
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            flag.unlink()
