"""``edgetl profile``: where the time goes, per layer, from the runtime's own profiler (here or on a board)."""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import device_options as do
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table

# The SSH helpers live in device_options; these names stay for callers that import them from here.
_ssh, _json_line = do.ssh_run, do.json_line


def register(app: typer.Typer) -> None:
    from edgetl.cli import latency_cmd

    app.command("profile")(profile_cmd)
    latency_cmd.register(app)  # the per-layer latency table: the same question, per width


def profile_cmd(
    artifact: Annotated[Path, typer.Argument(help="Model to profile: .onnx, OpenVINO .xml, edgetl .pt, .pte.")],
    device: Annotated[str, typer.Option("--device", "-D", help="Device profile name or YAML file.")] = "x86-cpu",
    host: Annotated[Optional[str], typer.Option("--host", "-H", help="Profile on this board over SSH "
                                                "(user@address or an SSH config alias).")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="onnxruntime, openvino, torch or executorch (default: the "
                                                   "format's own).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the profile's).")] = None,
    calls: Annotated[int, typer.Option(help="Profiled calls (and as many plain ones, interleaved).")] = 60,
    source: Annotated[Optional[Path], typer.Option(help="The PyTorch model the artifact was exported from, to "
                                                   "check mapped module names.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Profile JSON to write (a PNG chart "
                                                   "goes beside it). Default: beside the artifact, timestamped.")] = None,
    top: Annotated[int, typer.Option(help="Rows in the table and the chart.")] = 15,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    ssh_config: do.SshConfigOpt = None,
    port: do.PortOpt = None,
    remote_edgetl: do.RemoteEdgetlOpt = None,
    connect_timeout: do.ConnectTimeoutOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per-layer latency (runtime profiler), mapped to PyTorch modules, with the profiler's own inflation."""

    def body():
        from edgetl.errors import ConfigError, InputFileError
        from edgetl.fileio import check_output

        if not artifact.exists():
            raise InputFileError(f"artifact not found: {artifact}")
        if calls < 2:
            raise ConfigError(f"--calls must be at least 2, got {calls}")
        where = do.resolve_device(device, threads=threads, host=host, ssh_options=do.ssh_options(
            ssh_config=ssh_config, port=port, remote_edgetl=remote_edgetl, connect_timeout=connect_timeout))
        out = output or artifact.with_name(f"{artifact.name}-{time.strftime('%Y%m%d-%H%M%S')}.profile.json")
        if out.suffix != ".json":
            raise ConfigError(f"the profile is written as JSON; give a .json output, not {out.name}")
        check_output(out, overwrite=overwrite)  # exists, parent, writability, name length: before any work
        if where.ssh is not None:
            prof = _remote(artifact, where, runtime=runtime, calls=calls)
        else:
            prof = _local(artifact, runtime=runtime, threads=where.threads, calls=calls, source=source,
                          device=where.profile.name)
        from benchmarks.profiler import plot_profile
        from edgetl.fileio import write_json

        write_json(out, prof.to_dict())
        chart = plot_profile(prof, out.with_suffix(".png"), top=top)
        result = {"profile": prof.to_dict(), "output": str(out), "chart": str(chart)}

        def render(console):
            share = {m: ms / prof.ops_sum_ms if prof.ops_sum_ms else 0.0 for m, ms in prof.by_module()}
            table(console, f"{prof.artifact} on {prof.host}: {prof.runtime} {prof.runtime_version}, threads "
                  f"{prof.threads or 'all'} (ms per inference, mean of {prof.calls} profiled calls)",
                  ["module", "ms", "share"], [[m, f"{ms:.4f}", f"{100 * share[m]:.1f} %"]
                                              for m, ms in prof.by_module()[:top]])
            console.print(f"operators sum to {prof.ops_sum_ms:.4g} ms of a profiled total of {prof.total_ms:.4g} ms "
                          f"(stated tolerance {prof.sum_tolerance:.0%}); plain p50 {prof.plain_p50_ms:.4g} ms, "
                          f"profiled p50 {prof.profiled_p50_ms:.4g} ms: the profiler inflates calls "
                          f"{prof.inflation:.2f}x")
            for n in prof.notes:
                console.print(f"note: {n}")
            console.print(f"saved {out} and {chart}")

        return result, render

    execute(body, json_=json_, debug=debug)


def _local(artifact: Path, *, runtime, threads, calls, source, device):
    from benchmarks.profiler import profile_artifact
    from edgetl.models import load_model

    art = load_model(str(artifact))
    src = load_model(str(source)) if source is not None else None
    return profile_artifact(art, runtime=runtime, threads=threads, calls=calls, source=src, device=device)


def _remote(artifact: Path, where: do.DeviceTarget, *, runtime, calls):
    """Copy the artifact to the board, run ``edgetl profile --json`` there (or trtexec for an engine)."""
    import yaml

    from benchmarks.profiler import LayerProfile
    from benchmarks.remote import companion_files
    from edgetl.errors import RemoteError

    target, prof_dev, threads = where.ssh, where.profile, where.threads
    files = companion_files(artifact)
    run_dir = f"{target.workdir.rstrip('/')}/profile-{time.strftime('%Y%m%d-%H%M%S')}"
    _ssh(target.ssh_argv(f"mkdir -p {shlex.quote(run_dir)}"), target, during="connecting", timeout=60)
    try:
        with tempfile.TemporaryDirectory(prefix="edgetl-profile-") as tmp:
            d = prof_dev.to_dict()
            d.pop("source", None)
            d["connection"] = {"method": "local"}  # on the board itself the profile is local
            yaml_file = Path(tmp) / f"{prof_dev.name}.yaml"
            yaml_file.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
            _ssh(target.scp_argv([*files, yaml_file], run_dir), target, during=f"copying {artifact.name}")
        if artifact.suffix in (".engine", ".plan"):
            return _remote_trtexec(target, run_dir, artifact, calls)
        args = ["profile", artifact.name, "--device", yaml_file.name, "--calls", str(calls), "--json",
                "-o", "remote.profile.json"]
        if runtime:
            args += ["--runtime", runtime]
        if threads:
            args += ["--threads", str(threads)]
        cmd = f"cd {shlex.quote(run_dir)} && {target.remote_edgetl} {' '.join(shlex.quote(a) for a in args)}"
        r = _ssh(target.ssh_argv(cmd), target, during=f"profiling {artifact.name}")
        payload = _json_line(r.stdout)
        if payload is None:
            tail = (r.stderr.strip().splitlines() or [""])[-1]
            raise RemoteError(f"edgetl on {target.host} ended without a profile (exit {r.returncode}): {tail}; "
                              "install edgetl there or pass --remote-edgetl")
        if not payload.get("ok"):
            raise RemoteError(f"on {target.host}, profiling {artifact.name} failed: {payload.get('error')}")
        prof = LayerProfile.from_dict(payload["profile"])
        prof.host = target.host
        return prof
    finally:
        try:
            _ssh(target.ssh_argv(f"rm -rf {shlex.quote(run_dir)}"), target, during="cleaning up", timeout=30)
        except RemoteError:
            pass


_MARK = "=====EDGETL-TRTEXEC-PROFILE====="


def _remote_trtexec(target, run_dir: str, artifact: Path, calls: int):
    from benchmarks.profiler import parse_trtexec_profile
    from edgetl.errors import RemoteError

    q = shlex.quote
    engine, prof_f, info_f = f"{run_dir}/{artifact.name}", f"{run_dir}/profile.json", f"{run_dir}/layers.json"
    cmd = (f"{target.trtexec} --loadEngine={q(engine)} --iterations={int(calls)} --dumpProfile "
           f"--profilingVerbosity=detailed --exportProfile={q(prof_f)} --exportLayerInfo={q(info_f)} "
           f"> {q(run_dir + '/trtexec.log')} 2>&1; rc=$?; cat {q(prof_f)} 2>/dev/null; echo {_MARK}; "
           f"cat {q(info_f)} 2>/dev/null; echo {_MARK}; tail -n 3 {q(run_dir + '/trtexec.log')}; exit $rc")
    r = _ssh(target.ssh_argv(cmd), target, during=f"running trtexec on {artifact.name}")
    parts = r.stdout.split(_MARK)
    if r.returncode != 0 or len(parts) < 3 or not parts[0].strip():
        raise RemoteError(f"trtexec on {target.host} failed for {artifact.name} (exit {r.returncode}): "
                          f"{parts[-1].strip()[-300:] if parts else ''}")
    try:
        profile, info = json.loads(parts[0]), (json.loads(parts[1]) if parts[1].strip() else None)
    except json.JSONDecodeError as e:
        raise RemoteError(f"trtexec on {target.host} wrote an unreadable profile ({e})") from None
    prof = parse_trtexec_profile(profile, info, artifact=artifact.name)
    prof.host = target.host
    return prof


