"""One test per kind of bad input a user gave us: each gets one clear line, the right exit code and no output.

Exit codes: 2 for the user's input (options, files, data), 1 for a runtime failure.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.errors import DataError, InputFileError, UnsafeCheckpointError
from tests.conftest import run_cli_here


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr
    return lines[0]


# --------------------------------------------------------------------------- output paths, before any work
@pytest.fixture()
def unwritable_dir(tmp_path) -> Path:
    """A directory this process cannot write in (/proc for root, whom permission bits do not stop)."""
    if os.geteuid() == 0:
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.mark.parametrize("case", ["parent-is-file", "read-only", "name-too-long"])
def test_output_path_is_checked_before_any_work(case, tmp_path, unwritable_dir):
    from edgetl.fileio import check_output

    (tmp_path / "file.txt").write_text("x")
    out = {"parent-is-file": tmp_path / "file.txt" / "out.onnx", "read-only": unwritable_dir / "out.onnx",
           "name-too-long": tmp_path / ("n" * 250 + ".onnx")}[case]
    needle = {"parent-is-file": "is a file, not a directory", "read-only": "cannot write in",
              "name-too-long": "shorten it"}[case]
    with pytest.raises(InputFileError, match=needle):
        check_output(out)
    # The CLI refuses before loading anything: a model that does not exist is never reached.
    r = run_cli_here("quantize", str(tmp_path / "missing.pt"), "--data", "digits", "-o", str(out))
    assert r.returncode == 2 and needle in _one_line(r.stderr)
    assert not list(tmp_path.glob(".*part*"))


def test_check_output_accepts_new_parents_and_refuses_kind_mismatch(tmp_path):
    from edgetl.fileio import check_output

    assert check_output(tmp_path / "a" / "b" / "m.onnx") == tmp_path / "a" / "b" / "m.onnx"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    with pytest.raises(InputFileError, match="is a directory"):
        check_output(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputFileError, match="is a file; give a directory"):
        check_output(tmp_path / "f", kind="dir")


def test_run_directory_under_a_file_is_refused_before_the_recipe_runs(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "run"
    r = run_cli_here("run", "--recipe", "cpu-tiny-int8", "--model", "efficientnet_lite0", "--data", "digits",
                     "-o", str(out))
    assert r.returncode == 2 and "is a file, not a directory" in _one_line(r.stderr)


# --------------------------------------------------------------------------- model files
def test_corrupt_checkpoint_names_the_file_and_the_damage(tmp_path):
    from edgetl.models import load_model

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(64, 64)}, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path, needle in ((cut, "corrupt or truncated"), (noise, "not a PyTorch file")):
        with pytest.raises(InputFileError, match=needle) as e:
            load_model(path)
        assert str(path) in str(e.value)
    r = run_cli_here("eval", str(cut), "--data", "digits")
    assert r.returncode == 2 and str(cut) in _one_line(r.stderr)


def test_a_text_file_is_not_called_a_pickle(tmp_path):
    from edgetl.models import load_model

    p = tmp_path / "notes.pt"
    p.write_text("hello world\nthese are my notes\n")
    with pytest.raises(InputFileError, match="a text file, not a model") as e:
        load_model(p)
    assert "pickle" not in str(e.value) and "'hello world'" in str(e.value)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="is empty"):
        load_model(empty)


def test_pickle_refusal_names_only_options_the_command_has(tmp_path):
    p = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(4, 2), p)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python object"):
        from edgetl.models import load_model

        load_model(p)
    r = run_cli_here("eval", str(p), "--data", "digits")  # eval has --unsafe-pickle and --arch
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "--unsafe-pickle" in line and "--arch" in line
    r = run_cli_here("quantize", str(p), "--data", "digits", "-o", str(tmp_path / "q.onnx"))  # has --arch only
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "pickled Python object" in line
    assert "--unsafe-pickle" not in line and "--arch" in line and "edgetl.save_model" in line
    r = run_cli_here("bench", str(p), "--no-store")  # has neither
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "pickled Python object" in line
    assert "--unsafe-pickle" not in line and "--arch" not in line and "edgetl.save_model" in line


# --------------------------------------------------------------------------- data
def test_data_with_nan_or_inf_is_refused_with_the_count_and_where(tmp_path):
    from edgetl.data import load_data

    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    x[3, 0, 0] = np.nan
    x[17, 2, 2] = np.inf
    x[17, 2, 3] = np.nan
    y = np.arange(40) % 2
    p = tmp_path / "bad.npz"
    np.savez(p, x=x, y=y)
    with pytest.raises(DataError, match=r"2 NaN and 1 infinite value\(s\) in 2 image\(s\) \(index 3, 17\)"):
        load_data(p)
    r = run_cli_here("eval", "efficientnet_lite0", "--data", str(p))
    assert r.returncode == 2 and "NaN" in _one_line(r.stderr)


# --------------------------------------------------------------------------- usage errors and exit codes
def test_usage_errors_are_one_line_and_one_json_object():
    r = run_cli_here("eval", "--bogus")
    assert r.returncode == 2 and "No such option: --bogus" in _one_line(r.stderr) and "╭" not in r.stderr
    r = run_cli_here("eval", "x.pt", "--bogus", "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out == {"ok": False, "error": out["error"], "error_type": "UsageError"} and "--bogus" in out["error"]
    r = run_cli_here("quantize", "--json")  # missing argument
    assert r.returncode == 2 and json.loads(r.stdout)["error_type"] == "UsageError"


def test_third_party_warnings_only_with_verbose():
    from edgetl.cli import _common

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _common.quiet_third_party(False)
        warnings.warn_explicit("chatter", UserWarning, "x.py", 1, module="onnxruntime.quantization")
        warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="edgetl.quantize")
    assert [str(w.message) for w in caught] == ["ours"]


def test_a_refused_run_leaves_no_run_directory_behind(tmp_path):
    out = tmp_path / "run"
    for args, needle in ((["--model", str(tmp_path / "missing.pt"), "--data", "digits"], "model file not found"),
                         (["--model", "efficientnet_lite0", "--data", str(tmp_path / "nope")], "dataset not found")):
        r = run_cli_here("run", "--recipe", "cpu-tiny-int8", *args, "-o", str(out))
        assert r.returncode == 2 and needle in _one_line(r.stderr)
        assert not out.exists()  # nothing claimed: the corrected rerun is not "made for another model"
