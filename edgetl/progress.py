"""Progress reporting without printing from library code.

Library code wraps long loops in :func:`track` (or opens a :func:`task`); by default nothing is shown.
The CLI installs a reporter that draws a bar with rate and ETA on stderr.

Example::

    for x, y in track(batches, "fine-tune epoch 1", total=len(loader)):
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

__all__ = ["Reporter", "Task", "set_reporter", "task", "track"]

T = TypeVar("T")


class Task(Protocol):
    def advance(self, n: float = 1, **fields: Any) -> None: ...


class Reporter(Protocol):
    def open(self, description: str, total: float | None) -> Task: ...
    def close(self, task: Task) -> None: ...


class _NullTask:
    def advance(self, n: float = 1, **fields: Any) -> None:
        pass


class _NullReporter:
    def open(self, description: str, total: float | None) -> Task:
        return _NullTask()

    def close(self, task: Task) -> None:
        pass


_reporter: Reporter = _NullReporter()


def set_reporter(reporter: Reporter | None) -> Reporter:
    """Install ``reporter`` (None restores silence); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter or _NullReporter()
    return previous


@contextlib.contextmanager
def task(description: str, total: float | None = None) -> Iterator[Task]:
    t = _reporter.open(description, total)
    try:
        yield t
    finally:
        _reporter.close(t)


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as t:
        for item in items:
            yield item
            t.advance(1)
