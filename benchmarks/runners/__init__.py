"""Moved to :mod:`edgetl.runtimes` (the runtimes are the bottom layer); these names stay for old imports."""

from __future__ import annotations

from edgetl.artifact import Format
from edgetl.runtimes import RUNTIMES, Runner, RunnerOptions, Runtime, RuntimeOptions, open_runner, runner_for

__all__ = ["DEFAULT_RUNTIME", "RUNNERS", "Runner", "RunnerOptions", "Runtime", "RuntimeOptions", "open_runner",
           "runner_for"]

# runtime name -> (module, class, formats it runs), the shape this table had here
RUNNERS: dict[str, tuple[str, str, tuple[Format, ...]]] = {
    n: (*s.entry.split(":"), s.formats) for n, s in RUNTIMES.items()}


def __getattr__(name: str):
    if name == "DEFAULT_RUNTIME":  # from the format table, computed when asked for
        from edgetl.formats import FORMAT_INFO

        return {f: i.runtime for f, i in FORMAT_INFO.items() if i.runtime}
    raise AttributeError(name)
