"""Native libraries' routine messages, kept off the user's terminal unless they ask for them.

Some runtimes write straight to file descriptor 2 from C++, where Python's logging and warnings filters cannot
reach: ExecuTorch's XNNPACK delegate prints five ``[cpuinfo_utils.cpp:NN] ...`` lines each time it loads a
method on an x86 machine (it looks for ARM identification files). :func:`native_stderr` captures fd 2 for a block
and replays every line except the known routine ones, so real native errors still reach the user.

``EDGETL_VERBOSE=1`` (the CLI sets it for ``--verbose``/``--debug``) lets everything through.

Example::

    with native_stderr():
        method = program.load_method("forward")
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

__all__ = ["ROUTINE", "native_stderr", "verbose"]

# Lines a runtime prints on every load that say nothing about the user's model.
ROUTINE: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] "),  # ExecuTorch/XNNPACK probing for ARM id files on x86
)


def verbose() -> bool:
    return os.environ.get("EDGETL_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def native_stderr(routine: Sequence[re.Pattern[str]] = ROUTINE) -> Iterator[None]:
    """Capture fd 2 during the block; afterwards write back every line not matching ``routine``."""
    if verbose():
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (an in-process test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(p.search(line) for p in routine)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
