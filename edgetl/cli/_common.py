"""What every command shares: ``--json`` output, one-line errors with the right exit code, progress bars.

A command body returns ``(result_dict, render)``; with ``--json`` exactly one JSON object goes to stdout,
otherwise ``render(console)`` prints tables. Human text, progress and errors always go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from edgetl.errors import EdgetlError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]

Render = Callable[[Any], None]


def _console(stderr: bool = True):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # In logs and pipes rich assumes 80 columns and cuts paths and figures; tables are data there, keep them whole.
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else 200)


class RichReporter:
    """edgetl.progress reporter drawing rich bars (rate, ETA and live fields) on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=_console(), transient=False,
        )
        self._open = 0

    def open(self, description: str, total: float | None):
        if self._open == 0:
            self._progress.start()
        self._open += 1
        task_id = self._progress.add_task(description, total=total, rate="", info="")
        return _RichTask(self._progress, task_id)

    def close(self, task) -> None:
        self._open -= 1
        if self._open == 0:
            self._progress.stop()


class _RichTask:
    def __init__(self, progress, task_id) -> None:
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        t = self._p.tasks[self._id] if self._id < len(self._p.tasks) else None
        speed = t.speed if t is not None else None
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._p.update(self._id, advance=n, rate=f"{speed:.1f}/s" if speed else "", info=info)


class LineReporter:
    """Progress for logs and CI (stderr is not a terminal): a plain line every ~10 s and at the end."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval = interval_s

    def open(self, description: str, total: float | None):
        return _LineTask(description, total, self.interval)

    def close(self, task) -> None:
        task.finish()


class _LineTask:
    def __init__(self, description: str, total: float | None, interval: float) -> None:
        import time

        self.desc, self.total, self.interval = description, total, interval
        self.done, self.fields = 0.0, ""
        self.start = self.last = time.monotonic()

    def _line(self, final: bool) -> str:
        import time

        el = time.monotonic() - self.start
        rate = self.done / el if el > 0 else 0.0
        of = f"/{self.total:g}" if self.total else ""
        eta = ""
        if not final and self.total and rate > 0:
            eta = f", ETA {max(self.total - self.done, 0) / rate:.0f} s"
        return f"{self.desc}: {self.done:g}{of} ({rate:.1f}/s, {el:.0f} s{eta}) {self.fields}".rstrip()

    def advance(self, n: float = 1, **fields: Any) -> None:
        import time

        self.done += n
        if fields:
            self.fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self._line(False), file=sys.stderr, flush=True)

    def finish(self) -> None:
        print(self._line(True) + " done", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout, by Python or by native code, to stderr until the block ends.

    With ``--json`` stdout must carry exactly one JSON object, but libraries print there on their own
    (ONNX Runtime's percentile calibrator prints its progress with ``print``; native runtimes write to fd 1).
    """
    sys.stdout.flush()
    try:
        fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not real files (an in-process test runner)
        fd = saved = None
    else:
        saved = os.dup(fd)
        os.dup2(err_fd, fd)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        finally:
            sys.stderr.flush()
            if saved is not None:
                os.dup2(saved, fd)
                os.close(saved)


def execute(body: Callable[[], tuple[dict[str, Any], Render | None]], *, json_: bool, debug: bool) -> None:
    """Run a command body with edgetl's conventions; exits the process."""
    from edgetl import progress

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    previous = progress.set_reporter(RichReporter() if sys.stderr.isatty() else LineReporter())
    try:
        with _stdout_to_stderr() if json_ else contextlib.nullcontext():
            result, render = body()
    except EdgetlError as e:
        verdict = getattr(e, "verdict", None)
        _fail(str(e), type(e).__name__, e.exit_code, json_=json_, debug=debug,
              details={"verdict": verdict.to_dict()} if verdict is not None else None)
    except KeyboardInterrupt:
        _fail("interrupted", "KeyboardInterrupt", 130, json_=json_, debug=debug)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line, not a traceback
        _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback, and please report it)",
              type(e).__name__, 1, json_=json_, debug=debug)
    finally:
        progress.set_reporter(previous)
    if json_:
        sys.stdout.write(json.dumps({"ok": True, **result}, default=_default) + "\n")
    elif render is not None:
        render(_console())
    raise typer.Exit(0)


def _fail(message: str, kind: str, code: int, *, json_: bool, debug: bool, details: dict | None = None):
    if debug:
        traceback.print_exc()
    from rich.markup import escape

    # Escaped: messages quote things like pip install 'edgetl[mobile]', which rich would eat as markup.
    _console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    if json_:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "error_type": kind, **(details or {})}) + "\n")
    raise typer.Exit(code)


def _default(obj: Any) -> Any:
    from edgetl.fileio import _json_default

    return _json_default(obj)


def table(console, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    console.print(t)
