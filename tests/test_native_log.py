"""Native runtimes' routine lines stay off the terminal unless --verbose; real native errors still show."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

from tests.conftest import run_cli, run_cli_here

CPUINFO = "[cpuinfo_utils.cpp:"


def test_native_stderr_drops_only_routine_lines():
    code = ("import os; from edgetl.native_log import native_stderr\n"
            "with native_stderr():\n"
            "    os.write(2, b'[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n')\n"
            "    os.write(2, b'E something real went wrong\\n')\n")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert CPUINFO not in quiet.stderr and "E something real went wrong" in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EDGETL_VERBOSE": "1"})
    assert CPUINFO in loud.stderr and "E something real went wrong" in loud.stderr


def test_executorch_eval_is_quiet_and_verbose_shows_the_runtime(tmp_path):
    import executorch  # noqa: F401  (part of the test install: missing is a failure, not a skip)

    from edgetl.models import load_model, save_model

    art = load_model("edgetl_tinycnn", num_classes=10)
    art = dataclasses.replace(art, input_spec=dataclasses.replace(art.input_spec, shape=(3, 16, 16)))
    pt = save_model(art, tmp_path / "tiny.pt")
    # The .pte is only this test's input (made in-process); the two evals are fresh processes, as a user's are.
    r = run_cli_here("export", str(pt), "--format", "executorch", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    pte = next((tmp_path / "out").rglob("*.pte"))
    quiet = run_cli("eval", str(pte), "--data", "digits", "--split", "test")
    assert quiet.returncode == 0, quiet.stderr
    loud = run_cli("eval", str(pte), "--data", "digits", "--split", "test", "--verbose")
    assert loud.returncode == 0, loud.stderr
    # On x86 XNNPACK prints its ARM probing on every method load: shown with --verbose, hidden without
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert CPUINFO in loud.stderr
    assert CPUINFO not in quiet.stderr
    assert "is an Enum subclass" not in quiet.stderr and "No CUDA runtime is found" not in quiet.stderr
