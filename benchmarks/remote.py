"""Benchmarks on a board across the network, over the system ``ssh``/``scp``.

For each artifact: copy it (with its sidecar and companion files) to a work directory on the board, run
``edgetl bench FILE --json`` there (or, where the board has TensorRT but no edgetl, ``trtexec --loadEngine
--exportTimes`` parsed into the same result format), bring the JSON result back and store it at once, so a
board that drops mid-run loses nothing already measured. Several boards run in parallel (:func:`bench_farm`).

Security and robustness: the user's SSH config and keys are used (or a config file given explicitly);
``BatchMode=yes`` (never prompt), ``StrictHostKeyChecking=yes`` (edgetl never accepts a host key on its
own: a mismatch or unknown key is a clear error), ``ConnectTimeout`` and ``ServerAlive*`` so a dead board
fails in seconds, not at TCP's leisure.

Example::

    target = SshTarget.from_profile("nvidia@orin", load_profile("jetson-orin-nano"))
    results = bench_remote(["model.onnx"], target, profile=profile, config=BenchConfig(), store=ResultsStore())
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.contract_inputs import RemoteFeeds
from benchmarks.harness import BenchConfig, BenchResult
from benchmarks.profiles import DeviceProfile
from edgetl.errors import ConfigError, EdgetlError, InputFileError, RemoteError

__all__ = ["FarmResult", "SshTarget", "bench_farm", "bench_remote", "companion_files"]

_MARK = "=====EDGETL-TRTEXEC-TIMES====="


@dataclass(frozen=True)
class SshTarget:
    """A board reachable over SSH. ``host`` is ``user@address`` or an alias from the SSH config."""

    host: str
    port: int | None = None
    ssh_config: str | None = None  # an ssh_config file (ssh -F); None: the user's ~/.ssh/config
    options: tuple[str, ...] = ()  # extra "Key=Value" ssh options
    connect_timeout_s: int = 10
    server_alive_interval_s: int = 5
    server_alive_count_max: int = 3
    remote_edgetl: str = "edgetl"  # shell words that run edgetl on the board
    trtexec: str = "trtexec"
    workdir: str = "/tmp/edgetl-bench"
    command_timeout_s: float | None = None  # one remote command's wall-clock limit

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise ConfigError(f"invalid SSH host {self.host!r}; give user@address or an alias from your SSH config")

    @classmethod
    def from_profile(cls, host: str | None, profile: DeviceProfile, **overrides: Any) -> SshTarget:
        """The profile's connection settings, for ``host`` (or the profile's own host)."""
        c = profile.connection
        host = host or c.host
        if not host:
            raise ConfigError(f"device profile {profile.name!r} names no host; pass --host user@board")
        if c.user and "@" not in host:
            host = f"{c.user}@{host}"
        kw: dict[str, Any] = {"host": host, "port": c.port, "ssh_config": c.ssh_config, "options": c.ssh_options,
                              "connect_timeout_s": c.connect_timeout_s,
                              "server_alive_interval_s": c.server_alive_interval_s,
                              "server_alive_count_max": c.server_alive_count_max, "remote_edgetl": c.remote_edgetl,
                              "trtexec": c.trtexec, "workdir": c.workdir}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def _common(self) -> list[str]:
        args = []
        if self.ssh_config:
            args += ["-F", str(Path(self.ssh_config).expanduser())]
        # Command-line -o options win over the config file: strict host keys cannot be relaxed by a config.
        for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"ConnectTimeout={self.connect_timeout_s}",
                    f"ServerAliveInterval={self.server_alive_interval_s}",
                    f"ServerAliveCountMax={self.server_alive_count_max}", *self.options):
            args += ["-o", opt]
        return args

    def ssh_argv(self, command: str) -> list[str]:
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh", *self._common(), *port, "-T", self.host, "--", command]

    def scp_argv(self, sources: Sequence[Path], dest_dir: str) -> list[str]:
        port = ["-P", str(self.port)] if self.port else []
        return ["scp", "-q", *self._common(), *port, *[str(s) for s in sources], f"{self.host}:{dest_dir}/"]


@dataclass
class FarmResult:
    """What a device farm run produced: every result taken, and each failed host's error."""

    results: list[BenchResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors
def _classify(target: SshTarget, rc: int, stderr: str, *, during: str, connected: bool) -> RemoteError:
    """A one-line RemoteError from ssh/scp's exit status and stderr."""
    text = stderr.strip()
    low = text.lower()
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip() and not ln.startswith("@")), "")
    host = target.host
    if "remote host identification has changed" in low or "host key for" in low and "has changed" in low:
        return RemoteError(f"host key of {host} does not match the known one (REMOTE HOST IDENTIFICATION HAS "
                           "CHANGED): a re-installed board, or someone in between. If the board was re-flashed, "
                           f"remove the old key (ssh-keygen -R <address>) and verify the new one with a plain `ssh "
                           f"{host}` first; edgetl never accepts host keys itself")
    if "host key verification failed" in low or "no " in low and "host key is known" in low:
        return RemoteError(f"host key of {host} is not known or not verified; connect once with `ssh {host}` to "
                           "check and accept it (edgetl runs ssh with StrictHostKeyChecking=yes)")
    if "permission denied" in low or "too many authentication failures" in low:
        return RemoteError(f"{host} refused the SSH login ({last}); check the user and that your key is in the "
                           "board's authorized_keys (edgetl never prompts for passwords)")
    if "could not resolve hostname" in low or "name or service not known" in low:
        return RemoteError(f"cannot resolve {host} ({last}); check the address or the Host alias in your SSH config")
    lost = ("connection closed", "broken pipe", "not responding", "connection reset", "closed by remote host",
            "lost connection", "connection refused", "timed out", "no route to host", "network is unreachable")
    if rc == 255 or any(s in low for s in lost):
        if connected:
            return RemoteError(f"lost {host} during {during} ({last or f'exit {rc}'}); the board dropped or "
                               "rebooted")
        return RemoteError(f"cannot reach {host} ({last or f'exit {rc}'}); check that the board is on, the "
                           f"address/port, and that sshd runs there (timeout {target.connect_timeout_s} s)")
    return RemoteError(f"{during} on {host} failed (exit {rc}): {last or 'no message'}")


class _Board:
    """One SSH board: runs commands and copies files, turning every failure into a RemoteError."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.connected = False

    def _run(self, argv: list[str], *, during: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=timeout or self.target.command_timeout_s)
        except FileNotFoundError:
            raise RemoteError(f"`{argv[0]}` is not installed here; install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{during} on {self.target.host} took longer than {timeout or self.target.command_timeout_s}"
                              " s; raise the command timeout or check the board") from None
        if r.returncode == 255 or (argv[0] == "scp" and r.returncode != 0):
            raise _classify(self.target, r.returncode, r.stderr, during=during, connected=self.connected)
        return r

    def sh(self, command: str, *, during: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        return self._run(self.target.ssh_argv(command), during=during, timeout=timeout)

    def copy(self, files: Sequence[Path], dest_dir: str, *, during: str) -> None:
        self._run(self.target.scp_argv(files, dest_dir), during=during)

    def probe(self, run_dir: str) -> dict[str, bool]:
        t = self.target
        edgetl_check = f"{t.remote_edgetl} devices --json >/dev/null 2>&1"
        trt_check = f"command -v {shlex.quote(t.trtexec)} >/dev/null 2>&1"
        cmd = (f"mkdir -p {shlex.quote(run_dir)} && echo EDGETL_PROBE; "
               f"if {edgetl_check}; then echo edgetl=yes; else echo edgetl=no; fi; "
               f"if {trt_check}; then echo trtexec=yes; else echo trtexec=no; fi")
        r = self.sh(cmd, during="connecting", timeout=max(30.0, 3.0 * t.connect_timeout_s))
        if "EDGETL_PROBE" not in r.stdout:
            raise RemoteError(f"cannot create {run_dir} on {t.host}: {r.stderr.strip().splitlines()[-1:] or r.returncode}"
                              "; set connection.workdir in the profile to a writable directory")
        self.connected = True
        return {"edgetl": "edgetl=yes" in r.stdout, "trtexec": "trtexec=yes" in r.stdout}


# --------------------------------------------------------------------------- files
def companion_files(path: Path) -> list[Path]:
    """The files that travel with a model: itself, its edgetl sidecar, its format's companions (the format table's:
    OpenVINO's .bin, ONNX external data)."""
    from edgetl.formats import companion_files as companions

    if not path.exists():
        raise InputFileError(f"artifact not found: {path}")
    return companions(path)


def _bench_flags(config: BenchConfig) -> list[str]:
    flags = ["--batch", str(config.batch), "--warmup", str(config.warmup_s), "--warmup-runs", str(config.warmup_runs),
             "--min-time", str(config.min_time_s), "--min-count", str(config.min_count), "--max-time",
             str(config.max_time_s), "--hint", config.hint, "--inputs", config.inputs.value]
    if config.threads:
        flags += ["--threads", str(config.threads)]
    if config.runtime:
        flags += ["--runtime", config.runtime]
    if config.precision:
        flags += ["--precision", config.precision]
    if config.compile:
        flags += ["--compile"]
    return flags


def _profile_yaml(profile: DeviceProfile, folder: Path) -> Path:
    """The profile as a YAML file to send along (the board's edgetl may not know a user profile)."""
    import yaml

    d = profile.to_dict()
    d.pop("source", None)
    d["connection"] = {"method": "local"}  # on the board itself the profile is local
    f = folder / f"{profile.name}.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return f


def _parse_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


# --------------------------------------------------------------------------- bench
def bench_remote(paths: Sequence[str | Path], target: SshTarget, *, profile: DeviceProfile,
                 config: BenchConfig | None = None, store=None, run_id: str | None = None,
                 on_result: Callable[[BenchResult], None] | None = None, keep_files: bool = False,
                 eval_data: str | None = None, feeds: RemoteFeeds | None = None) -> list[BenchResult]:
    """Measure each artifact on ``target``; each result is stored as soon as it arrives. ``feeds`` (from
    :func:`benchmarks.contract_inputs.remote_feeds`): models timed by their contract on the real feeds packed
    here, sent along with the contract flags.

    Raises :class:`RemoteError` when the board cannot be reached or verified, lacks both edgetl and trtexec,
    or drops mid-run; results taken before that are already in ``store``.
    """
    config = config or BenchConfig()
    paths = [Path(p) for p in paths]
    file_sets = [companion_files(p) for p in paths]  # fail on a missing file before connecting
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = f"{target.workdir.rstrip('/')}/{run_id}"
    board = _Board(target)
    have = board.probe(run_dir)
    results: list[BenchResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edgetl-remote-") as tmp:
            prof_file = _profile_yaml(profile, Path(tmp))
            if have["edgetl"]:
                sent = [prof_file] + ([feeds.npz] if feeds is not None and feeds.npz is not None else [])
                board.copy(sent, run_dir, during="copying the device profile" + (" and the feeds" if len(sent) > 1
                                                                                 else ""))
            elif feeds is not None:
                raise RemoteError(f"{target.host} has no working edgetl (`{target.remote_edgetl}`): a model by its "
                                  "contract is timed there by edgetl on the feeds sent along; install edgetl there")
            for k, (path, files) in enumerate(zip(paths, file_sets, strict=True)):
                what = f"{path.name} ({k + 1}/{len(paths)})"
                try:
                    board.copy(files, run_dir, during=f"copying {what}")
                    if have["edgetl"]:
                        res = _bench_with_edgetl(board, run_dir, path, prof_file.name, config, what, eval_data,
                                                 feeds)
                    elif have["trtexec"] and path.suffix in (".engine", ".plan"):
                        res = _bench_with_trtexec(board, run_dir, path, profile, config, what)
                    else:
                        only = " (it has trtexec, which runs only .engine/.plan files)" if have["trtexec"] else ""
                        raise RemoteError(f"{target.host} has no working edgetl (`{target.remote_edgetl}`){only}; "
                                          "install edgetl there (pip install edgetl) or set connection.remote_edgetl "
                                          "in the profile / --remote-edgetl")
                except RemoteError as e:
                    if results:
                        e.args = (f"{e} ({len(results)} result(s) from {target.host} already taken are kept)",)
                    raise
                res.host = target.host
                res.device = profile.name
                res.path = str(path)
                if store is not None:
                    store.add(res, run_id=run_id)
                results.append(res)
                if on_result is not None:
                    on_result(res)
    finally:
        if not keep_files and board.connected:
            try:  # best effort: a board that dropped keeps its temp files until reboot
                board.sh(f"rm -rf {shlex.quote(run_dir)}", during="cleaning up", timeout=30)
            except RemoteError:
                pass
    return results


def _bench_with_edgetl(board: _Board, run_dir: str, path: Path, profile_file: str, config: BenchConfig, what: str,
                       eval_data: str | None, feeds: RemoteFeeds | None = None) -> BenchResult:
    t = board.target
    args = ["bench", path.name, "--device", profile_file, "--local", "--no-store", "--json", *_bench_flags(config)]
    if eval_data:
        args += ["--eval-data", eval_data]
    if feeds is not None:
        args += [*feeds.args, *(["--data", feeds.npz.name] if feeds.npz is not None else [])]
    cmd = f"cd {shlex.quote(run_dir)} && {t.remote_edgetl} {' '.join(shlex.quote(a) for a in args)}"
    r = board.sh(cmd, during=f"benchmarking {what}")
    payload = _parse_json_line(r.stdout)
    if payload is None:
        tail = (r.stderr.strip().splitlines() or [""])[-1]
        killed = f" (killed by signal {r.returncode - 128})" if r.returncode > 128 else ""
        raise RemoteError(f"edgetl on {t.host} ended without a result for {what}: exit {r.returncode}{killed}"
                          f"{': ' + tail if tail else ''}")
    if not payload.get("ok"):
        raise RemoteError(f"on {t.host}, benchmarking {what} failed: {payload.get('error', 'unknown error')}")
    res = payload.get("results") or []
    if len(res) != 1:
        raise RemoteError(f"edgetl on {t.host} returned {len(res)} results for {what}; expected one")
    out = BenchResult.from_dict(res[0])
    if feeds is not None and feeds.origin is not None:
        out.inputs = f"{out.inputs}; sent from {feeds.origin}, {feeds.samples} sample(s)"
    return out


def _bench_with_trtexec(board: _Board, run_dir: str, path: Path, profile: DeviceProfile, config: BenchConfig,
                        what: str) -> BenchResult:
    from benchmarks.trtexec import result_from_trtexec, trtexec_command

    t = board.target
    warmup_ms = max(200, int(config.warmup_s * 1000))
    engine, times, log_file = (f"{run_dir}/{path.name}", f"{run_dir}/times.json", f"{run_dir}/trtexec.log")
    run = trtexec_command(t.trtexec, engine, times, warmup_ms=warmup_ms, duration_s=config.min_time_s,
                          iterations=config.min_count)
    env_cmd = profile.power_mode_cmd or "true"
    cmd = (f"{run} > {shlex.quote(log_file)} 2>&1; rc=$?; cat {shlex.quote(log_file)}; echo {_MARK}; "
           f"cat {shlex.quote(times)} 2>/dev/null; echo {_MARK}; ({env_cmd}) 2>/dev/null | head -c 400; "
           "echo; uname -a; exit $rc")
    r = board.sh(cmd, during=f"running trtexec on {what}")
    parts = r.stdout.split(_MARK)
    if r.returncode != 0 or len(parts) < 3 or not parts[1].strip():
        tail = (parts[0].strip().splitlines() or [""])[-1] if parts else ""
        raise RemoteError(f"trtexec on {t.host} failed for {what} (exit {r.returncode}): {tail}")
    try:
        records = json.loads(parts[1])
    except json.JSONDecodeError as e:
        raise RemoteError(f"trtexec on {t.host} wrote unreadable times for {what} ({e})") from None
    extra = parts[2].strip().splitlines()
    env = {"power_mode": "\n".join(extra[:-1]).strip() or None, "os": extra[-1] if extra else None,
           "profile": profile.name}
    try:
        return result_from_trtexec(records, parts[0], artifact=path.name, path=str(path), warmup_ms=warmup_ms,
                                   batch=config.batch, device=profile.name, host=t.host,
                                   env={k: v for k, v in env.items() if v}, config=config.to_dict())
    except EdgetlError as e:
        raise RemoteError(f"trtexec output from {t.host} for {what}: {e}") from None


def bench_farm(paths: Sequence[str | Path], targets: Sequence[SshTarget], *, profile: DeviceProfile,
               config: BenchConfig | None = None, store=None, run_id: str | None = None,
               on_result: Callable[[BenchResult], None] | None = None, eval_data: str | None = None,
               feeds: RemoteFeeds | None = None) -> FarmResult:
    """Run :func:`bench_remote` on every target at once (one thread per board); a failed board does not stop
    the others, and its error is reported per host."""
    if not targets:
        raise ConfigError("no hosts given")
    hosts = [t.host for t in targets]
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"a host is listed twice: {', '.join(hosts)}")
    out = FarmResult()
    lock = threading.Lock()

    def collect(res: BenchResult) -> None:  # results arrive one by one, so a failed board keeps its earlier ones
        with lock:
            out.results.append(res)
        if on_result is not None:
            on_result(res)

    def one(target: SshTarget) -> None:
        bench_remote(paths, target, profile=profile, config=config, store=store, run_id=run_id, on_result=collect,
                     eval_data=eval_data, feeds=feeds)

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {t.host: pool.submit(one, t) for t in targets}
        for host, fut in futures.items():
            try:
                fut.result()
            except EdgetlError as e:
                out.errors[host] = str(e)
    return out
