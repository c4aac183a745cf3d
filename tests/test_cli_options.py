"""The pieces the commands share: device and SSH options, output checks, lazy package exports and the
per-target stage config base. Each is checked on its own and, where it matters, through a real command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgetl.errors import ConfigError, UnknownNameError
from tests.conftest import run_cli_here


# --------------------------------------------------------------------------- device options
def test_resolve_device_reads_the_profile_and_the_ssh_overrides():
    from edgetl.cli.device_options import resolve_device, ssh_options

    here = resolve_device("jetson-orin-nano", threads=None)
    assert here.profile.name == "jetson-orin-nano" and here.threads == 6 and here.ssh is None  # the profile's
    assert resolve_device("jetson-orin-nano", threads=2).threads == 2
    board = resolve_device("x86-cpu", threads=None, host="me@board",
                           ssh_options=ssh_options(ssh_config=Path("/x/ssh_config"), port=2222, connect_timeout=3))
    assert (board.ssh.host, board.ssh.port, board.ssh.ssh_config, board.ssh.connect_timeout_s) == (
        "me@board", 2222, "/x/ssh_config", 3)
    assert board.ssh.remote_edgetl == "edgetl"  # not given: the profile's
    with pytest.raises(ConfigError, match="--threads must be at least 1, got 0"):
        resolve_device("x86-cpu", threads=0)
    with pytest.raises(UnknownNameError, match="did you mean 'x86-cpu'"):
        resolve_device("x86-cpux", threads=None)


def test_json_line_is_the_last_json_object_printed():
    from edgetl.cli.device_options import json_line

    assert json_line('progress\n{"ok": true, "a": 1}\nbye\n') == {"ok": True, "a": 1}
    assert json_line('{"ok": false}\n{"ok": true}\n') == {"ok": True}
    assert json_line("no json here\n") is None
    assert json_line("{not json\n") is None


def test_profile_threads_are_checked_before_the_artifact_loads(tmp_path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"not a model: never read, the option is refused first")
    r = run_cli_here("profile", str(art), "--threads", "0", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 2 and "--threads must be at least 1" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- one output check for every -o
@pytest.fixture()
def unwritable_dir(tmp_path) -> Path:
    if os.geteuid() == 0:  # permission bits do not stop root; /proc refuses new files to anyone
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def test_package_and_export_refuse_an_unwritable_output_before_any_work(tmp_path, unwritable_dir):
    missing = str(tmp_path / "missing.pt")  # never reached: the output is refused first
    for args in (["package", missing, "--device", "x86-cpu"], ["export", missing, "--format", "onnx"],
                 ["profile", str(_dummy(tmp_path)), "--calls", "2"]):
        out = unwritable_dir / ("out.json" if args[0] == "profile" else "out")
        r = run_cli_here(*args, "-o", str(out), "--json")
        assert r.returncode == 2, (args, r.stderr)
        assert "cannot write in" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert json.loads(r.stdout)["ok"] is False


def test_package_refuses_an_existing_bundle_the_way_export_does(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for args in (["package", str(tmp_path / "missing.pt"), "--device", "x86-cpu"],
                 ["export", str(tmp_path / "missing.pt"), "--format", "onnx"]):
        r = run_cli_here(*args, "-o", str(out))
        assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr, (args, r.stderr)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _dummy(tmp_path: Path) -> Path:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    return f


# --------------------------------------------------------------------------- lazy exports
@pytest.fixture()
def lazy_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from edgetl.lazy import lazy_exports

        __all__, __getattr__, __dir__ = lazy_exports(globals(), {
            "lazypkg.heavy": ("Heavy", "make"),
            "lazypkg.light": ("LIGHT",),
        })
    """))
    (pkg / "heavy.py").write_text("LOADS = []\nLOADS.append(1)\nclass Heavy: pass\ndef make(): return Heavy()\n")
    (pkg / "light.py").write_text("LIGHT = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg"
    for name in [m for m in sys.modules if m == "lazypkg" or m.startswith("lazypkg.")]:
        del sys.modules[name]


def test_lazy_exports_import_a_module_only_when_a_name_is_used(lazy_pkg):
    import importlib

    pkg = importlib.import_module(lazy_pkg)
    assert pkg.__all__ == ["Heavy", "LIGHT", "make"]
    assert "lazypkg.heavy" not in sys.modules and "Heavy" in dir(pkg)
    assert pkg.LIGHT == 42 and "lazypkg.heavy" not in sys.modules
    assert isinstance(pkg.make(), pkg.Heavy)
    assert sys.modules["lazypkg.heavy"].LOADS == [1] and vars(pkg)["Heavy"] is sys.modules["lazypkg.heavy"].Heavy
    with pytest.raises(AttributeError, match="module 'lazypkg' has no attribute 'Nope'"):
        pkg.Nope  # noqa: B018
    with pytest.raises(ValueError, match="make is exported from both"):
        from edgetl.lazy import lazy_exports

        lazy_exports({}, {"a": ("make",), "b": ("make",)})


def test_stage_packages_stay_lazy_and_export_every_name():
    code = ("import sys, edgetl.prune as p, edgetl.distill as d; "
            "early = [m for m in ('torch', 'torch_pruning', 'zennit') if m in sys.modules]; "
            "cfg = p.PruneConfig, d.DistillConfig, d.Views.parse('BOTH'), d.Optimizer.parse('sgd'); "
            "print(early, sorted(p.__all__) == p.__all__, 'prune' in p.__all__, 'distill' in d.__all__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True", "True", "True"]


# --------------------------------------------------------------------------- per-target stage configs
@dataclasses.dataclass(frozen=True)
class _Opts:
    level: int = 1

    def to_dict(self):
        return {"level": self.level}


def _targets_config():
    from edgetl.multi_target import MultiTargetConfig

    @dataclasses.dataclass(frozen=True)
    class Cfg(MultiTargetConfig):
        TARGETS, OPTIONS = "boards", "opts"
        EMPTY = "give at least one board"

        boards: tuple[str, ...] = ("a",)
        opts: _Opts = dataclasses.field(default_factory=_Opts)
        label: str | None = None

        @classmethod
        def check_target(cls, name: str) -> None:
            if name not in ("a", "b"):
                raise UnknownNameError("board", name, ["a", "b"])

    return Cfg


def test_multi_target_config_normalises_checks_and_round_trips():
    Cfg = _targets_config()
    c = Cfg.from_options({"boards": "b", "level": 3})
    assert c.boards == ("b",) and c.opts == _Opts(3)
    assert Cfg(boards=["a", "b"], opts={"level": 2}).opts == _Opts(2)  # a mapping becomes the options class
    assert Cfg.from_options({}).boards == ("a",)  # the field's default
    assert Cfg.option_names() == ["boards", "level"]  # own fields (label) are not recipe keys
    assert Cfg(label="x").to_dict() == {"boards": ["a"], "level": 1, "label": "x"}
    d = Cfg(boards=("a", "b"), opts=_Opts(5)).to_dict()
    assert Cfg.from_options({k: d[k] for k in Cfg.option_names()}) == Cfg(boards=("a", "b"), opts=_Opts(5))
    with pytest.raises(ConfigError, match="give at least one board"):
        Cfg(boards=())
    with pytest.raises(UnknownNameError, match="did you mean 'b'"):
        Cfg(boards=("a", "bb"))


# --------------------------------------------------------------------------- timing settings and the results db
def test_profile_timing_takes_each_option_else_the_profile():
    from benchmarks.profiles import BenchDefaults
    from edgetl.cli.bench_options import profile_timing

    board = BenchDefaults(warmup_s=1.0, warmup_runs=20, min_time_s=5.0, min_count=300, max_time_s=60.0)
    none = dict(warmup=None, warmup_runs=None, min_time=None, min_count=None)
    assert profile_timing(board, **none) == {"warmup_runs": 20, "warmup_s": 1.0, "min_time_s": 5.0,
                                             "min_count": 300, "max_time_s": 60.0}
    given = profile_timing(board, warmup=0.1, warmup_runs=2, min_time=0.5, min_count=7, max_time=3.0)
    assert given == {"warmup_runs": 2, "warmup_s": 0.1, "min_time_s": 0.5, "min_count": 7, "max_time_s": 3.0}
    # a minimum time past the limit raises the limit, it is never cut short
    assert profile_timing(board, **{**none, "min_time": 90.0})["max_time_s"] == 90.0
    assert profile_timing(board, **none, max_time=1.0)["max_time_s"] == 5.0


def test_results_db_is_checked_like_every_output(unwritable_dir, tmp_path):
    from edgetl.cli.bench_options import open_store
    from edgetl.errors import InputFileError

    assert open_store(unwritable_dir / "r.db", no_store=True) is None  # nothing is written: nothing to check
    with pytest.raises(InputFileError, match="--db .*cannot write in"):
        open_store(unwritable_dir / "r.db", no_store=False)
    assert open_store(tmp_path / "r.db", no_store=False).path == tmp_path / "r.db"
