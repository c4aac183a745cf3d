"""``edgetl bench``: latency of exported artifacts on this machine or on boards over SSH."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgetl.cli import contract_options as co
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table
from edgetl.cli.bench_options import DbOpt, open_store, profile_timing
from edgetl.cli.device_options import ssh_options


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)


def result_row(r, *, with_host: bool = False) -> list[Any]:
    """One table row per result (device, batch and threads go in the title)."""
    from benchmarks.report import speedup_cell

    s = r.latency_ms
    return [*([r.host] if with_host else []), r.artifact + (" (contended)" if r.contended else ""), r.format,
            r.runtime, r.precision, f"{s.p50:.3f}", f"{s.p90:.3f}", f"{s.p99:.3f}", s.count, speedup_cell(r),
            f"{r.cold_start_ms:.0f}" if r.cold_start_ms is not None else "-",
            f"{r.peak_rss_delta_mb:.0f}" if r.peak_rss_delta_mb is not None else "-",
            f"{r.model_size_bytes / 1e6:.1f}" if r.model_size_bytes else "-",
            f"{100 * r.accuracy:.2f}" if r.accuracy is not None else "-"]


RESULT_COLUMNS = ["artifact", "format", "runtime", "precision", "p50", "p90", "p99", "n", "vs base", "cold",
                  "peak MB", "MB", "acc %"]


def bench_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="Exported models (.onnx, .xml, .ort, .pte, .engine, .pt ...).")],
    device: Annotated[str, typer.Option("--device", "-D", help="Device profile name or YAML file (see `edgetl devices`).")] = "x86-cpu",
    host: Annotated[Optional[list[str]], typer.Option("--host", "-H", help="Board to run on over SSH (user@address or an SSH config alias); repeat for a device farm.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the profile's, else every core).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    min_time: Annotated[Optional[float], typer.Option("--min-time", help="Minimum seconds of timed calls.")] = None,
    min_count: Annotated[Optional[int], typer.Option("--min-count", help="Minimum number of timed calls.")] = None,
    max_time: Annotated[Optional[float], typer.Option("--max-time", help="Stop after this many seconds even below --min-count.")] = None,
    warmup: Annotated[Optional[float], typer.Option("--warmup", help="Minimum seconds of warm-up.")] = None,
    warmup_runs: Annotated[Optional[int], typer.Option("--warmup-runs", help="Minimum warm-up calls.")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="Force a runtime (torch, onnxruntime, openvino, ...).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Runtime precision hint, e.g. OpenVINO bf16 (default: true fp32).")] = None,
    hint: Annotated[str, typer.Option(help="OpenVINO performance hint: latency, throughput or none.")] = "latency",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile PyTorch models (compile time counts in the cold start).")] = False,
    inputs: Annotated[str, typer.Option(help="Inputs: auto (the model's dataset, else photos), data or photos.")] = "auto",
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="Also measure top-1 accuracy on this dataset's test split (for the Pareto plot).")] = None,
    db: DbOpt = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not write results to the database.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Run here even if the profile names a host.")] = False,
    ssh_config: Annotated[Optional[Path], typer.Option("--ssh-config", help="SSH config file to use instead of ~/.ssh/config.")] = None,
    port: Annotated[Optional[int], typer.Option(help="SSH port (default: the profile's, else the SSH config's).")] = None,
    remote_edgetl: Annotated[Optional[str], typer.Option("--remote-edgetl", help="Command that runs edgetl on the board, e.g. '~/venv/bin/edgetl'.")] = None,
    connect_timeout: Annotated[Optional[int], typer.Option("--connect-timeout", help="SSH connect timeout, seconds.")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Artifact the speed-ups are against (its path or file name; default: the first).")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds (A B C A B C ...); contended rounds are re-measured up to as many times again.")] = 5,
    max_spread: Annotated[float, typer.Option("--max-spread", help="A speed-up whose per-round ratios spread more than this fraction is marked unreliable.")] = 0.25,
    emulate: Annotated[bool, typer.Option("--emulate", help="Time this machine with a profile that describes another one (labelled 'emulated on ...').")] = False,
    input_: co.InputFlag = None,
    opt_shape: co.OptShapeFlag = None,
    data: co.BenchDataFlag = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Measure single-stream latency (p90 headline, p50/p99, cold start, memory) of each artifact."""

    def body():
        plan = _plan(artifacts, device=device, host=host, local=local, emulate=emulate, runtime=runtime,
                     inputs=inputs, hint=hint, baseline=baseline, rounds=rounds, max_spread=max_spread)
        config = _bench_config(plan, batch=batch, threads=threads, warmup_runs=warmup_runs, warmup=warmup,
                               min_time=min_time, min_count=min_count, max_time=max_time, runtime=runtime,
                               precision=precision, hint=hint, compile_=compile_)
        store = open_store(db, no_store=no_store)
        run_id = time.strftime("%Y%m%d-%H%M%S")
        if plan.hosts:
            ssh = ssh_options(ssh_config=ssh_config, port=port, remote_edgetl=remote_edgetl,
                              connect_timeout=connect_timeout)
            results, errors = _remote(artifacts, plan, config, store, run_id, ssh=ssh, eval_data=eval_data,
                                      contract=(input_, opt_shape, data))
        else:
            results, errors = _local(artifacts, plan, config, store, run_id, eval_data=eval_data,
                                     contract=(input_, opt_shape, data)), {}
        return _report(plan.profile, results, errors, store=store, run_id=run_id, batch=batch, json_=json_)

    execute(body, json_=json_, debug=debug)


@dataclass(frozen=True)
class _Plan:
    """What the options resolve to before anything is loaded or timed."""

    profile: Any  # benchmarks.profiles.DeviceProfile
    hosts: list[str]
    source: Any  # benchmarks.harness.InputSource
    interleave: Any  # benchmarks.interleave.InterleaveConfig
    baseline: int
    emulated: str | None


def _plan(artifacts: list[Path], *, device: str, host: list[str] | None, local: bool, emulate: bool,
          runtime: str | None, inputs: str, hint: str, baseline: str | None, rounds: int,
          max_spread: float) -> _Plan:
    """Cheap checks first (names, values, the profile against this machine), in the order users meet them."""
    from benchmarks.harness import InputSource
    from benchmarks.interleave import InterleaveConfig
    from benchmarks.profiles import Method, load_profile
    from edgetl.errors import ConfigError, UnknownNameError

    try:
        source = InputSource(inputs)
    except ValueError:
        raise UnknownNameError("input source", inputs, [s.value for s in InputSource]) from None
    if hint not in ("latency", "throughput", "none"):
        raise UnknownNameError("performance hint", hint, ["latency", "throughput", "none"])
    if not artifacts:
        raise ConfigError("give at least one artifact to benchmark")
    interleave = InterleaveConfig(rounds=rounds, max_spread=max_spread)
    base_index = _baseline_index(artifacts, baseline)
    prof = load_profile(device)
    hosts = list(host or [])
    if not hosts and not local and prof.connection.method is Method.SSH and prof.connection.host:
        hosts = [prof.connection.host]
    emulated = None
    if not hosts:  # a profile of another machine is refused before anything is loaded or timed
        from benchmarks.profiles import check_local

        if runtime is None:  # the more specific refusal first: a format the profile does not run
            from edgetl.formats import format_for_suffix

            for p in artifacts:
                fmt = format_for_suffix(p.suffix)
                if fmt is not None and p.exists():
                    prof.runtime_for(fmt)

        emulated = check_local(prof, emulate=emulate)
    return _Plan(prof, hosts, source, interleave, base_index, emulated)


def _baseline_index(artifacts: list[Path], name: str | None) -> int:
    if name is None:
        return 0
    for i, p in enumerate(artifacts):
        if name in (str(p), p.name):
            return i
    from edgetl.errors import UnknownNameError

    raise UnknownNameError("--baseline artifact", name, [str(p) for p in artifacts])


def _bench_config(plan: _Plan, *, batch: int, threads: int | None, warmup_runs: int | None, warmup: float | None,
                  min_time: float | None, min_count: int | None, max_time: float | None, runtime: str | None,
                  precision: str | None, hint: str, compile_: bool):
    """The measurement settings: each option given, else the device profile's."""
    from benchmarks.harness import BenchConfig

    return BenchConfig(
        batch=batch, threads=threads if threads is not None else _local_threads(plan.profile.threads, plan.hosts),
        **profile_timing(plan.profile.bench, warmup=warmup, warmup_runs=warmup_runs, min_time=min_time,
                         min_count=min_count, max_time=max_time),
        runtime=runtime, precision=precision, hint=hint, compile=compile_, inputs=plan.source)


def _local(artifacts: list[Path], plan: _Plan, config, store, run_id: str, *, eval_data: str | None,
           contract: tuple = (None, None, None)):
    """``contract``: the --input, --opt-shape and --data values (feeds by input name, any model)."""
    from benchmarks.contention import choose_omp_wait_policy
    from benchmarks.contract_inputs import prepare
    from benchmarks.interleave import Candidate, measure_interleaved
    from edgetl.models import load_model

    omp = choose_omp_wait_policy()  # before torch loads OpenMP (load_model imports torch)
    input_, opt_shape, data = contract
    flags = co.contract_flags(inputs=input_, opt_shapes=opt_shape)
    cands = []
    for path in artifacts:
        art = prepare(load_model(str(path)), flags, data=data)
        reload = (lambda p=str(path): prepare(load_model(p), flags, data=data)) if art.path is None else None
        cands.append(Candidate(art, source_path=path, reload=reload))
    run = measure_interleaved(cands, config, profile=plan.profile, baseline=plan.baseline,
                              interleave=plan.interleave)
    for c, res in zip(cands, run.results, strict=True):
        res.env["omp_wait_policy"] = omp
        res.emulated = plan.emulated
        if eval_data:
            _add_accuracy(res, c.artifact, eval_data, config.threads)
        if store is not None:
            store.add(res, run_id=run_id)
    return run.results


def _remote(artifacts: list[Path], plan: _Plan, config, store, run_id: str, *, ssh: dict[str, Any],
            eval_data: str | None, contract: tuple = (None, None, None)):
    """``contract``: --input, --opt-shape, --data; checked here and the feeds packed before connecting."""
    import tempfile

    from benchmarks.contract_inputs import remote_feeds
    from benchmarks.remote import SshTarget, bench_farm
    from edgetl.progress import task

    targets = [SshTarget.from_profile(h, plan.profile, **ssh) for h in plan.hosts]
    input_, opt_shape, data = contract
    with tempfile.TemporaryDirectory(prefix="edgetl-feeds-") as tmp:
        feeds = remote_feeds(artifacts, inputs=input_ or (), opt_shapes=opt_shape or (), data=data,
                             folder=Path(tmp), count=config.distinct_inputs * config.batch)
        with task(f"bench on {len(plan.hosts)} board(s)", total=len(plan.hosts) * len(artifacts)) as bar:
            farm = bench_farm(artifacts, targets, profile=plan.profile, config=config, store=store, run_id=run_id,
                              eval_data=eval_data, feeds=feeds,
                              on_result=lambda r: bar.advance(1, last=f"{r.host}:{r.artifact}",
                                                              p90_ms=r.latency_ms.p90))
    return farm.results, farm.errors


def _report(prof, results: list, errors: dict[str, str], *, store, run_id: str, batch: int, json_: bool):
    """The result and its rendering; a failed board raises after the rows taken elsewhere are shown."""
    db_path = str(store.path) if store else None
    result = {"device": prof.name, "run_id": run_id, "db": db_path,
              "results": [r.to_dict() for r in results], "errors": errors}

    def render(console):
        _render(console, prof, results, batch=batch, db_path=db_path, run_id=run_id)

    if errors:
        from rich.console import Console

        from edgetl.errors import RemoteError

        if results and not json_:
            render(Console(stderr=True))
        raise RemoteError("; ".join(f"{h}: {m}" for h, m in errors.items()))
    return result, render


def _render(console, prof, results: list, *, batch: int, db_path: str | None, run_id: str) -> None:
    remote = any(r.host != "local" for r in results)
    thr = sorted({str(r.threads or "all") for r in results})
    table(console, f"{prof.name}: latency per call in ms (p90 headline), batch {batch}, threads "
          f"{'/'.join(thr)}; cold = load + first call", ["host"] * remote + RESULT_COLUMNS,
          [result_row(r, with_host=remote) for r in results])
    for r in results:
        if r.emulated:
            console.print(f"[yellow]note:[/] {r.artifact}: {r.emulated}, not measured on {prof.name}",
                          highlight=False)
        for w in r.warnings:
            console.print(f"[yellow]warning:[/] {r.host}:{r.artifact}: {w}", highlight=False)
        sp = r.speedup
        if sp and not sp["reliable"]:
            console.print(f"[yellow]unreliable speed-up:[/] {r.artifact} vs {sp['baseline']}: "
                          f"{sp['unreliable_because']}", highlight=False)
    if db_path:
        console.print(f"stored in {db_path} (run {run_id}); `edgetl report` draws the plots")


def _local_threads(profile_threads: int | None, hosts: list[str]) -> int | None:
    """The profile's thread count, but never more threads than this machine lets the process use when the
    measurement runs here (a 6-thread board profile emulated on 2 cores would time oversubscription)."""
    import os

    if hosts or profile_threads is None:
        return profile_threads
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or profile_threads
    return min(profile_threads, usable)


def _add_accuracy(res, art, data: str, threads: int | None) -> None:
    """Top-1 on the test split, measured after the latency run so it cannot disturb it."""
    from edgetl.data import load_data
    from edgetl.evaluate import evaluate

    r = evaluate(art, load_data(data, seed=0), split="test", threads=threads)
    res.accuracy = float(r["accuracy"])
    res.accuracy_source = f"measured:{data}/test ({r['samples']} images)"
