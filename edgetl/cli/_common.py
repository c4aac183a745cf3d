"""What every command shares: ``--json`` output, one-line errors with the right exit code, progress bars.

A command body returns ``(result_dict, render)``; with ``--json`` exactly one JSON object goes to stdout,
otherwise ``render(console)`` prints tables. Human text, progress and errors always go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer

from edgetl.errors import EdgetlError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]

Render = Callable[[Any], None]


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


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


def execute(body: Callable[[], tuple[dict[str, Any], Render | None]], *, json_: bool, debug: bool) -> None:
    """Run a command body with edgetl's conventions; exits the process."""
    from edgetl import progress

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    previous = progress.set_reporter(RichReporter())
    try:
        result, render = body()
    except EdgetlError as e:
        _fail(str(e), type(e).__name__, e.exit_code, json_=json_, debug=debug)
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


def _fail(message: str, kind: str, code: int, *, json_: bool, debug: bool):
    if debug:
        traceback.print_exc()
    from rich.markup import escape

    # Escaped: messages quote things like pip install 'edgetl[mobile]', which rich would eat as markup.
    _console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    if json_:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "error_type": kind}) + "\n")
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
