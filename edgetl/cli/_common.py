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
        _fail(_cli_message(e), type(e).__name__, e.exit_code, json_=json_, debug=debug,
              details={"verdict": verdict.to_dict()} if verdict is not None else None)
    except KeyboardInterrupt:
        _fail("interrupted", "KeyboardInterrupt", 130, json_=json_, debug=debug)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line, not a traceback
        _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback, and please report it)",
              type(e).__name__, 1, json_=json_, debug=debug)
    finally:
        progress.set_reporter(previous)
    code = int(result.pop("exit_code", 0))  # a command that did part of its work says so (e.g. export)
    if json_:
        sys.stdout.write(json.dumps({"ok": code == 0, **result}, default=_default) + "\n")
    elif render is not None:
        render(_console())
    raise typer.Exit(code)


def _command_options() -> set[str]:
    try:  # typer >= 0.29 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return set()
    return {o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts)}


def _cli_message(e: Exception) -> str:
    """The error's message, with advice that names only options this command has (``cli_advice`` pairs)."""
    advice = getattr(e, "cli_advice", None)
    if not advice:
        return str(e)
    have = _command_options()
    tips = [tip for opt, tip in advice if opt is None or opt in have]
    if tips and tips[0].startswith("or "):
        tips[0] = tips[0][3:]
    return getattr(e, "cli_base", str(e)) + (". " + tips[0][0].upper() + tips[0][1:] + "".join(
        f"; {t}" for t in tips[1:]) if tips else "")


def _fail(message: str, kind: str, code: int, *, json_: bool, debug: bool, details: dict | None = None):
    if debug:
        traceback.print_exc()
    from rich.markup import escape

    # Escaped: messages quote things like pip install 'edgetl[mobile]', which rich would eat as markup.
    _console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    if json_:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "error_type": kind, **(details or {})}) + "\n")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- the process
VERBOSE = False  # set by --verbose (any position): third-party libraries' own messages are shown


def _usage_types():
    try:
        from typer._click import exceptions as ce
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions as ce
    from typer.exceptions import Abort, Exit

    return ce.UsageError, Exit, Abort


def run_app(app, argv: list[str] | None = None) -> None:
    """Run the typer app with edgetl's conventions for what happens before a command body runs: a usage error
    (unknown option, missing argument, bad value) is one line on stderr, plus one JSON object on stdout under
    ``--json``, and exit code 2. ``--verbose`` anywhere lets third-party libraries' messages through."""
    global VERBOSE

    args = list(sys.argv[1:] if argv is None else argv)
    VERBOSE = "--verbose" in args or "--debug" in args
    args = [a for a in args if a != "--verbose"]
    json_ = "--json" in args
    usage_error, exit_, abort = _usage_types()
    quiet_third_party(VERBOSE)
    try:
        rv = app(args=args, prog_name="edgetl", standalone_mode=False)
    except usage_error as e:
        where = e.ctx.command_path if getattr(e, "ctx", None) is not None else "edgetl"
        line = f"{e.format_message()} (see `{where} --help`)"
        _console().print(f"[bold red]error:[/] {_escape(line)}", highlight=False, markup=True)
        if json_:
            sys.stdout.write(json.dumps({"ok": False, "error": line, "error_type": "UsageError"}) + "\n")
        sys.exit(2)
    except exit_ as e:
        sys.exit(e.exit_code)
    except abort:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# Python loggers of libraries that report routine steps as warnings (ONNX Runtime's quantizer: "Removing
# initializer ..."; NNCF; torch's export and ONNX paths).
_CHATTY_LOGGERS = ("onnxruntime", "root", "nncf", "torch", "torch.onnx", "torch.export", "torch._dynamo",
                   "openvino", "executorch", "urllib3", "matplotlib", "PIL")


def quiet_third_party(verbose: bool) -> None:
    """Unless ``verbose``: Python warnings from libraries are hidden, their loggers show errors only, and native
    runtimes log errors only (ONNX Runtime's C++ logger). edgetl's own warnings still print."""
    if verbose:
        os.environ["EDGETL_VERBOSE"] = "1"  # edgetl.native_log lets native runtimes' routine lines through
        return
    import warnings

    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"edgetl(\..*)?$")
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # LiteRT / TensorFlow Lite native logs
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # torch configures its own loggers when imported (after this runs): "No CUDA runtime is found", pytree notes
    os.environ.setdefault("TORCH_LOGS", "-all")
    _quiet_ort_when_loaded()


def _quiet_ort_when_loaded() -> None:
    """Lower ONNX Runtime's native log severity to errors as soon as it is imported (not before: it is heavy)."""
    import importlib.abc
    import importlib.machinery

    if "onnxruntime" in sys.modules:
        _set_ort_severity(sys.modules["onnxruntime"])
        return

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "onnxruntime":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            original = loader.exec_module

            def exec_module(module):
                original(module)
                _set_ort_severity(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    if not any(type(f).__name__ == "_Hook" for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


def _set_ort_severity(ort) -> None:
    try:
        ort.set_default_logger_severity(3)
    except Exception:  # noqa: BLE001 - an ORT build without it: its messages stay
        pass


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
