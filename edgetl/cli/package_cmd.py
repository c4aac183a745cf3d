"""``edgetl package``, ``edgetl verify`` and ``edgetl predict``: a bundle per device, checked on the device.

Example::

    edgetl package runs/demo --device x86-cpu -o bundle-x86
    edgetl verify bundle-x86 [--host user@board]
    edgetl predict bundle-x86 digit.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli import device_options as do
from edgetl.cli._common import DebugOpt, JsonOpt, execute, table
from edgetl.cli.bench_options import DbOpt, open_store, profile_timing


def register(app: typer.Typer) -> None:
    app.command("package")(package_cmd)
    app.command("verify")(verify_cmd)
    app.command("predict")(predict_cmd)


def package_cmd(
    source: Annotated[str, typer.Argument(help="An `edgetl run` directory (its recommended artifact) or a model file "
                                          "(.onnx, .xml, .ort, .pte, .pt).")],
    device: Annotated[str, typer.Option("--device", "-D", help="Device profile name or YAML file (see `edgetl "
                                        "devices`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to write (must not exist unless "
                                         "--overwrite).")],
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset for the reference images and the "
                                                "fidelity sample (default: the one the model records).")] = None,
    source_model: Annotated[Optional[str], typer.Option("--source", help="The PyTorch model the artifact was made "
                                                        "from (reference outputs; default: the run's, else the "
                                                        "artifact's own).")] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset for TensorRT bundles (default: the "
                                                 "highest the profile's JetPack parses).")] = None,
    references: Annotated[int, typer.Option("--references", help="Reference images in the bundle.")] = 8,
    sample: Annotated[int, typer.Option("--sample", help="Labelled images in the bundle's fidelity sample.")] = 200,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle (once the new one is "
                                            "complete).")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Package a model for a device: model, manifest, labels, requirements, runner, reference data, checksums."""

    def body():
        from edgetl.fileio import check_output

        check_output(output, kind="dir", overwrite=overwrite)  # the same checks as every -o, before any work
        import torch

        from edgetl.package import package

        torch.set_flush_denormal(True)
        b = package(source, output, device=device, data=data, source_model=source_model, opset=opset,
                    overwrite=overwrite, reference_count=references, sample_count=sample)
        m = b.manifest
        result = {"bundle": str(b.path), "device": m["device"]["profile"], "model": m["model"],
                  "runs": m["runs"], "files": b.files, "requirements": m["requirements"],
                  "reference": {k: m["reference"][k] for k in ("sample_size", "dataset", "sample_accuracy",
                                                                "tolerance")},
                  "warnings": [w for w in ((m.get("measured") or {}).get(k) for k in ("substituted", "unsettled"))
                               if w]}

        def render(console):
            table(console, f"bundle for {result['device']}", ["file", "format", "runtime", "precision", "sha256"],
                  [[m["model"]["file"], m["model"]["format"], m["model"]["runtime"], m["model"]["precision"],
                    m["model"]["sha256"][:16]]])
            console.print(f"requirements: {', '.join(r for r in m['requirements'] if not r.startswith('#'))}")
            console.print(f"{len(b.files)} files, checksummed in SHA256SUMS")
            console.print(f"bundle: {b.path}")
            for w in result["warnings"]:
                console.print(f"[yellow]warning:[/] {w}", highlight=False)

        return result, render

    execute(body, json_=json_, debug=debug)


def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory made by `edgetl package`.")],
    host: Annotated[Optional[str], typer.Option("--host", "-H", help="Board to verify on over SSH (user@address or "
                                                "an SSH config alias); default: this machine.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Fidelity on a sample of this dataset's test "
                                                "split (default: the bundled sample).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", "-D", help="Device profile to file the result under "
                                                  "(default: the bundle's).")] = None,
    sample: Annotated[int, typer.Option("--sample", help="Images from --data.")] = 200,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the profile's).")] = None,
    min_time: Annotated[Optional[float], typer.Option("--min-time", help="Minimum seconds of timed calls.")] = None,
    min_count: Annotated[Optional[int], typer.Option("--min-count", help="Minimum number of timed calls.")] = None,
    warmup: Annotated[Optional[float], typer.Option("--warmup", help="Minimum seconds of warm-up.")] = None,
    warmup_runs: Annotated[Optional[int], typer.Option("--warmup-runs", help="Minimum warm-up calls.")] = None,
    python: Annotated[Optional[str], typer.Option("--python", help="Python that runs run.py (default: python3 on a "
                                                  "board, this interpreter here), e.g. '~/venv/bin/python'.")] = None,
    ssh_config: do.SshConfigOpt = None,
    port: do.PortOpt = None,
    connect_timeout: do.ConnectTimeoutOpt = None,
    db: DbOpt = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not write the result to the database.")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Verify a bundle on its device: checksums, reference outputs, fidelity and latency; stored under the device."""

    def body():
        from benchmarks.harness import BenchConfig
        from edgetl.package import verify_bundle
        from edgetl.package.verify import _profile, read_manifest

        man = read_manifest(bundle)
        prof = _profile(device or man["device"]["profile"])
        bench = BenchConfig(threads=threads if threads is not None else prof.threads,
                            **profile_timing(prof.bench, warmup=warmup, warmup_runs=warmup_runs, min_time=min_time,
                                             min_count=min_count))
        store = open_store(db, no_store=no_store)
        r = verify_bundle(bundle, host=host, data=data, device=prof.name, ssh_config=str(ssh_config) if ssh_config
                          else None, port=port, python=python, bench=bench, store=store, sample_size=sample,
                          connect_timeout_s=connect_timeout)
        result = {**r.to_dict(), "db": str(store.path) if store else None}

        def render(console):
            table(console, f"verify {bundle} on {r.device} ({r.host})", ["check", "ok", "detail"],
                  [[c.name, "yes" if c.ok else "NO", c.detail] for c in r.checks])
            if r.result is not None:
                s = r.result.latency_ms
                console.print(f"latency ({r.result.runtime}): p50 {s.p50:.3f} ms, p90 {s.p90:.3f} ms, p99 "
                              f"{s.p99:.3f} ms over {s.count} calls")
                for w in r.result.warnings:
                    console.print(f"[yellow]warning:[/] {w}", highlight=False)
            head = f"verified on {r.device}" if r.on_device else r.line.split(":")[0]
            console.print(head + (f"; stored in {store.path}" if store and r.result is not None else ""))

        return result, render

    execute(body, json_=json_, debug=debug)


def predict_cmd(
    target: Annotated[Path, typer.Argument(help="A bundle directory, or a model file (.onnx, .xml, .pt, ...).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict images with a bundle's runner (or a model file, with the same preprocessing), locally."""

    def body():
        from edgetl.errors import ConfigError, InputFileError
        from edgetl.package import predict

        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        if not target.exists():
            raise InputFileError(f"bundle or model not found: {target}")
        result = predict(target, list(images), top_k=top_k, threads=threads)

        def render(console):
            rows = []
            for r in result["results"]:
                if "top" in r:
                    rows += [[r["image"], t["label"], f"{t['score']:.4f}"] for t in r["top"][:top_k]]
                else:
                    rows.append([r["image"], "raw outputs", ", ".join(r["outputs"])])
            table(console, f"{result.get('model')} ({result.get('runtime')})", ["image", "label", "score"], rows)

        return result, render

    execute(body, json_=json_, debug=debug)
