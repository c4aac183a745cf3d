"""The SSH path end to end against a real sshd on 127.0.0.1 (Debian openssh-server), and trtexec parsing.

The "board" is this machine: sshd runs as the current user with a temporary host key, authorized_keys and
ssh_config, and the remote edgetl is this venv's. Nothing touches ~/.ssh.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_exports import export_onnx, export_openvino
from conftest import run_cli

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if Path(p).exists()), None)
REMOTE_EDGETL = f"{sys.executable} -m edgetl.cli"
QUICK = ["--min-time", "0.05", "--min-count", "5", "--warmup", "0.02", "--warmup-runs", "1", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


class Sshd:
    """A throw-away sshd on a free loopback port; ``stop()`` kills it and every session it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        _keygen(root / "host_key")
        _keygen(root / "client_key")
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        user = getpass.getuser()
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                 "/usr/lib/ssh/sftp-server") if Path(p).exists()), "internal-sftp")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PidFile {root / 'sshd.pid'}\nSubsystem sftp {sftp}\nLogLevel ERROR\n")
        host_pub = (root / "host_key.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = root / "ssh_config"
        self.write_config(root / "known_hosts")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation dir sshd insists on as root
        self.log = open(root / "sshd.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.user = user
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
            time.sleep(0.1)
        raise RuntimeError("sshd did not start listening")

    def write_config(self, known_hosts: Path, path: Path | None = None) -> Path:
        path = path or self.config
        path.write_text(
            f"Host board\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
            f"  IdentityFile {self.root / 'client_key'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        return path

    def descendants(self) -> list[int]:
        kids, frontier = [], [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            for p in Path("/proc").iterdir():
                if p.name.isdigit():
                    try:
                        ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
                    if ppid == parent:
                        kids.append(int(p.name))
                        frontier.append(int(p.name))
        return kids

    def stop(self) -> None:
        for pid in [self.proc.pid, *self.descendants()]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.log.close()


# Not skipped when sshd is missing: `make test` and .ci/run install openssh-server (skips are for GPU/TensorRT only).


@pytest.fixture()
def sshd(tmp_path):
    d = Sshd(tmp_path / "sshd")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def onnx_export(lite0_digits, tmp_path_factory) -> Path:
    return export_onnx(lite0_digits, tmp_path_factory.mktemp("remote_exports"))


def _target(sshd: Sshd, **kw):
    from benchmarks.remote import SshTarget

    return SshTarget(host="board", ssh_config=str(sshd.config), remote_edgetl=REMOTE_EDGETL,
                     workdir=str(sshd.root / "remote-work"), connect_timeout_s=5, **kw)


def _quick_config():
    from benchmarks.harness import BenchConfig

    return BenchConfig(threads=1, min_time_s=0.05, min_count=5, warmup_s=0.02, warmup_runs=1)


@pytest.mark.slow
def test_bench_through_host_matches_local_schema(sshd, onnx_export, tmp_path):
    db = tmp_path / "results.db"
    local = run_cli("bench", str(onnx_export), "--device", "x86-cpu", "--db", str(db), "--json", *QUICK)
    assert local.returncode == 0, local.stderr
    remote = run_cli("bench", str(onnx_export), "--device", "x86-cpu", "--host", "board", "--ssh-config",
                     str(sshd.config), "--remote-edgetl", REMOTE_EDGETL, "--db", str(db), "--json", *QUICK)
    assert remote.returncode == 0, remote.stderr
    lr, rr = json.loads(local.stdout)["results"][0], json.loads(remote.stdout)["results"][0]
    assert set(lr) == set(rr)
    assert set(lr["latency_ms"]) == set(rr["latency_ms"])
    assert rr["host"] == "board" and lr["host"] == "local"
    assert rr["format"] == "onnx" and rr["runtime"] == "onnxruntime" and rr["tool"] == "edgetl"
    s = rr["latency_ms"]
    assert s["count"] >= 5 and 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert rr["inputs"].startswith("data:digits")  # the remote side prepared the model's own dataset
    from benchmarks.store import ResultsStore

    hosts = sorted(r.host for r in ResultsStore(db).results())
    assert hosts == ["board", "local"]
    # The remote work directory is cleaned up after the run.
    assert not any((sshd.root / "remote-work").glob("*/*.onnx"))


def test_host_key_mismatch_is_a_clear_error(sshd, onnx_export, tmp_path):
    from benchmarks.profiles import load_profile
    from benchmarks.remote import bench_remote
    from edgetl.errors import RemoteError

    other = tmp_path / "other_key"
    _keygen(other)
    pub = (tmp_path / "other_key.pub").read_text().split()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    cfg = sshd.write_config(wrong, tmp_path / "cfg_wrong")
    from dataclasses import replace

    with pytest.raises(RemoteError, match="does not match the known one"):
        bench_remote([onnx_export], replace(_target(sshd), ssh_config=str(cfg)), profile=load_profile("x86-cpu"),
                     config=_quick_config())
    unknown = sshd.write_config(tmp_path / "empty_known_hosts", tmp_path / "cfg_unknown")
    with pytest.raises(RemoteError, match="not known or not verified"):
        bench_remote([onnx_export], replace(_target(sshd), ssh_config=str(unknown)),
                     profile=load_profile("x86-cpu"), config=_quick_config())


def test_unreachable_host_fails_fast_with_a_clear_message(onnx_export, tmp_path):
    port = _free_port()  # nothing listens there
    r = run_cli("bench", str(onnx_export), "--host", "127.0.0.1", "--port", str(port), "--connect-timeout", "3",
                "--db", str(tmp_path / "r.db"), *QUICK, timeout=60)
    assert r.returncode == 1
    assert "cannot reach 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_board_dropping_mid_run_keeps_results_already_taken(sshd, onnx_export, lite0_digits, tmp_path):
    from benchmarks.profiles import load_profile
    from benchmarks.remote import bench_farm
    from benchmarks.store import ResultsStore
    ov_file = export_openvino(lite0_digits, tmp_path / "ov")
    store = ResultsStore(tmp_path / "results.db")

    def kill_board(res):  # the board dies right after the first result came back
        sshd.stop()

    farm = bench_farm([onnx_export, ov_file], [_target(sshd)], profile=load_profile("x86-cpu"),
                      config=_quick_config(), store=store, on_result=kill_board)
    assert [r.artifact for r in farm.results] == [onnx_export.name]
    assert "board" in farm.errors
    msg = farm.errors["board"]
    assert ("lost board" in msg or "cannot reach board" in msg) and "already taken are kept" in msg
    kept = store.results()
    assert [r.artifact for r in kept] == [onnx_export.name] and kept[0].host == "board"


def test_remote_without_edgetl_or_trtexec_says_what_to_install(sshd, onnx_export):
    from dataclasses import replace

    from benchmarks.profiles import load_profile
    from benchmarks.remote import bench_remote
    from edgetl.errors import RemoteError

    target = replace(_target(sshd), remote_edgetl="/nonexistent/edgetl", trtexec="/nonexistent/trtexec")
    with pytest.raises(RemoteError, match="no working edgetl"):
        bench_remote([onnx_export], target, profile=load_profile("x86-cpu"), config=_quick_config())


def test_trtexec_only_board_is_parsed_into_the_same_schema(sshd, tmp_path):
    """A board with trtexec but no edgetl: a stand-in trtexec writes the documented outputs."""
    from dataclasses import replace

    from benchmarks.harness import BenchResult
    from benchmarks.profiles import load_profile
    from benchmarks.remote import bench_remote

    fake = tmp_path / "trtexec"
    fake.write_text("#!" + sys.executable + "\n" + FAKE_TRTEXEC)
    fake.chmod(0o755)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine; the stand-in trtexec does not read it")
    res = bench_remote([engine], replace(_target(sshd), remote_edgetl="/nonexistent/edgetl", trtexec=str(fake)),
                       profile=load_profile("jetson-orin-nano"), config=_quick_config())
    assert len(res) == 1
    r = res[0]
    assert r.tool == "trtexec" and r.runtime == "trtexec" and r.host == "board" and r.device == "jetson-orin-nano"
    assert r.latency_ms.count == 40  # the 10 warm-up records are dropped
    assert set(BenchResult.from_dict(r.to_dict()).to_dict()) == set(r.to_dict())
    assert r.env.get("tensorrt_version") == "10.3.0"


@pytest.fixture(scope="module")
def vad_feeds(tmp_path_factory):
    """A three-input ONNX (audio, a recurrent state, an int64 scalar sample rate) and real feeds by input name."""
    import numpy as np
    import torch

    from tests import shapes
    from tests.cli_checks import onnx_of

    d = tmp_path_factory.mktemp("remote_vad")
    torch.manual_seed(0)
    src = onnx_of(shapes.VadLike().eval(), (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000)),
                  d / "vad.onnx", inputs=["audio", "state", "sr"], outputs=["prob", "new_state"],
                  dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})
    rng = np.random.default_rng(3)
    np.savez(d / "vad.npz", audio=rng.standard_normal((12, 1, 256)).astype(np.float32),
             state=rng.uniform(-1, 1, (12, 2, 1, 32)).astype(np.float32), sr=np.full(12, 8000, np.int64))
    return src, d / "vad.npz"


def test_remote_bench_times_the_real_feeds_of_a_three_input_model_on_the_board(sshd, vad_feeds, tmp_path):
    """The contract is checked and the feeds read here, packed as an .npz named after the inputs, sent with the
    contract flags, and timed on the board by its edgetl: the result says which feeds it timed."""
    src, data = vad_feeds
    r = run_cli("bench", str(src), "--device", "x86-cpu", "--host", "board", "--ssh-config", str(sshd.config),
                "--remote-edgetl", REMOTE_EDGETL, "--data", str(data), "--opt-shape", "audio:1x256",
                "--opt-shape", "state:2x1x32", "--db", str(tmp_path / "r.db"), "--json", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["host"] == "board" and res["tool"] == "edgetl" and res["runtime"] == "onnxruntime"
    assert res["latency_ms"]["count"] >= 5 and res["latency_ms"]["p50"] > 0
    assert res["inputs"].startswith("data:feeds.npz[0:8] (audio 1x256, state 2x1x32, sr scalar)"), res["inputs"]
    assert f"sent from {data}, 8 sample(s)" in res["inputs"]
    assert not any((sshd.root / "remote-work").glob("*/feeds.npz"))  # cleaned up on the board


def test_remote_bench_contract_refusals_come_before_connecting(vad_feeds, tmp_path):
    """Nothing listens on the port: the contract's own errors must come first, each one line, exit 2."""
    src, data = vad_feeds
    port = str(_free_port())
    base = ("bench", str(src), "--host", "127.0.0.1", "--port", port, "--connect-timeout", "3", "--db",
            str(tmp_path / "r.db"), *QUICK)
    for extra, words in ((("--opt-shape", "audio:1x256", "--opt-shape", "state:2x1x32"), ("'sr'", "--data")),
                         (("--input", "nope:1x256", "--data", str(data)), ("nope",)),
                         (("--input", "audio:1x128", "--data", str(data)), ("256",))):
        r = run_cli(*base, *extra, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        msg = r.stderr.strip()
        assert len(msg.splitlines()) == 1 and all(w in msg for w in words) and "cannot reach" not in msg, msg


# A stand-in for trtexec that writes a log and an --exportTimes file in trtexec's documented formats:
# 10 warm-up queries inside --warmUp, then 40 timed ones.
FAKE_TRTEXEC = r'''
import json, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
warm = float(args["warmUp"])
recs, t = [], 0.0
for i in range(50):
    start = t if i < 10 else warm + t
    h2d, comp, d2h = 0.05, 1.0 + (i % 7) * 0.1, 0.04
    recs.append({"startEnqMs": start, "endEnqMs": start + 0.02, "startH2dMs": start, "endH2dMs": start + h2d,
                 "startComputeMs": start + h2d, "endComputeMs": start + h2d + comp,
                 "startD2hMs": start + h2d + comp, "endD2hMs": start + h2d + comp + d2h,
                 "h2dMs": h2d, "computeMs": comp, "d2hMs": d2h, "latencyMs": h2d + comp + d2h,
                 "endToEndMs": h2d + comp + d2h})
    t += 2.0
json.dump(recs, open(args["exportTimes"], "w"))
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(sys.argv[1:]))
print("[I] TensorRT version: 10.3.0")
print("[I] Selected Device: Orin")
print("[I] Throughput: 480.5 qps")
print("[I] Latency: min = 1.09 ms, max = 1.69 ms, mean = 1.38 ms, median = 1.39 ms, percentile(90%) = 1.59 ms, "
      "percentile(95%) = 1.69 ms, percentile(99%) = 1.69 ms")
'''
