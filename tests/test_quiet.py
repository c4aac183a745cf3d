"""benchmarks/quiet.py: the quiet protocol a timed benchmark takes (flag + exclusive lock, pauses, clean-up).

The latprune suite's end-to-end ``--smoke`` run is not part of ``make test``: it takes minutes on 2 cores and its
latency targets on a toy CNN (about 0.05 ms) are below what the allocator can meet; run it with
``python -m benchmarks.suites.latprune --smoke --work /tmp/lp --out /tmp/lp-out``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quiet_machine_flags_locks_pauses_and_cleans_up(tmp_path):
    import fcntl
    import signal
    import time

    from benchmarks.quiet import quiet_machine

    flag, lock = tmp_path / "quiet", tmp_path / "bench.lock"
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    try:
        with quiet_machine(flag=flag, lock=lock, pause=[child.pid]) as q:
            assert flag.exists()
            time.sleep(0.2)
            state = Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0]
            assert state == "T"  # stopped while the machine is quiet
            fd = os.open(lock, os.O_RDWR)
            try:  # another holder cannot take the lock, even shared, while it is held
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            with quiet_machine(flag=flag, lock=lock) as inner:  # re-entrant: no wait on our own lock
                assert flag.exists() and inner.mode == "nested"
            assert flag.exists()
        assert q.paused == [child.pid] and q.mode == "held"
        assert not flag.exists()
        time.sleep(0.2)
        assert Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0] != "T"
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
        finally:
            os.close(fd)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_flag_left_by_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    from benchmarks.quiet import remove_stale_flag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    flag = tmp_path / "quiet"
    flag.write_text(f"{dead.pid}\n")
    assert remove_stale_flag(flag) and not flag.exists()
    flag.write_text(f"{os.getpid()}\n")
    assert not remove_stale_flag(flag) and flag.exists()
    flag.write_text("")  # written by a tool that records no pid (the shell wrapper): left alone
    assert not remove_stale_flag(flag) and flag.exists()
