"""What the commands that time a model share (``edgetl bench``, ``edgetl verify``): the results database and
the timing settings, each option as given, else the device profile's.

Example::

    config = BenchConfig(threads=2, **profile_timing(profile.bench, warmup=None, warmup_runs=None,
                                                     min_time=0.5, min_count=None))
    store = open_store(db, no_store=False)     # --db checked like every output, before any work
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["DbOpt", "open_store", "profile_timing"]

DbOpt = Annotated[Optional[Path], typer.Option("--db", help="Results database (default: $EDGETL_RESULTS_DB or "
                                                             "~/.cache/edgetl/results.db).")]


def profile_timing(defaults: Any, *, warmup: float | None, warmup_runs: int | None, min_time: float | None,
                   min_count: int | None, max_time: float | None = None) -> dict[str, Any]:
    """The :class:`~benchmarks.harness.BenchConfig` timing fields: each given value, else the profile's
    (``defaults`` is a profile's ``bench``). The time limit never cuts below the minimum time."""
    min_time_s = min_time if min_time is not None else defaults.min_time_s
    return {"warmup_runs": warmup_runs if warmup_runs is not None else defaults.warmup_runs,
            "warmup_s": warmup if warmup is not None else defaults.warmup_s,
            "min_time_s": min_time_s,
            "min_count": min_count if min_count is not None else defaults.min_count,
            "max_time_s": max(max_time if max_time is not None else defaults.max_time_s, min_time_s)}


def open_store(db: Path | None, *, no_store: bool):
    """The results database (``--db``, checked before any work), or None with ``--no-store``."""
    if no_store:
        return None
    from benchmarks.store import ResultsStore

    if db is not None:
        from edgetl.fileio import check_output

        check_output(db, what="--db")
    return ResultsStore(db)
