"""``edgetl latency-table``: measure (or read from the cache) a model's per-layer latency table here.

What ``edgetl prune --target-latency-ms ... --host BOARD`` runs on the board over SSH; useful alone to see the
staircase of each layer. Registered by :mod:`edgetl.cli.profile_cmd` (both are about where the time goes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("latency-table")(latency_table_cmd)


def latency_table_cmd(
    model: Annotated[str, typer.Argument(help="PyTorch model (edgetl .pt checkpoint or zoo name).")],
    device: Annotated[str, typer.Option("--device", "-D", help="Device profile (part of the cache key).")] = "x86-cpu",
    runtime: Annotated[str, typer.Option(help="onnxruntime, openvino or torch.")] = "onnxruntime",
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the profile's).")] = None,
    precision: Annotated[str, typer.Option(help="fp32, or int8 (QDQ layers; needs --base-ms).")] = "fp32",
    base_ms: Annotated[Optional[float], typer.Option("--base-ms", help="The deployed full model's measured p50 "
                                                     "(required for int8).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Cache directory (default: $EDGETL_LATENCY_CACHE or "
                                                  "~/.cache/edgetl/latency).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Few calls per point, coarse grid (smoke runs).")] = False,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per-layer latency as a function of kept channels, measured on the runtime (cached)."""

    def body():
        from benchmarks.latency_table import TimingConfig, build_latency_table, table_summary
        from benchmarks.profiles import load_profile
        from edgetl.errors import ConfigError
        from edgetl.models import load_model

        prof = load_profile(device)
        art = load_model(model)
        if art.model is None:
            raise ConfigError(f"{model}: the latency table is built from a PyTorch model (.pt), not "
                              f"{art.format.value}")
        t = build_latency_table(art.model, art.input_spec.shape, runtime=runtime,
                                threads=threads if threads is not None else prof.threads, device=prof.name,
                                precision=precision, cache_dir=cache, base_ms=base_ms,
                                timing=TimingConfig(calls=3, rounds=1, warmup=1) if quick else TimingConfig(),
                                max_points=6 if quick else 12)
        result = {"table": t.to_dict(), "summary": table_summary(t)}

        def render(console):
            s = table_summary(t)
            rows = []
            for g in sorted(t.groups, key=lambda g: -t.base_ms + t.predict_ms({g: t.candidates(g)[0]}))[:15]:
                c = t.candidates(g)
                rows.append([g, t.groups[g], " ".join(map(str, c)), f"{t.base_ms - t.predict_ms({g: c[0]}):.4f}"])
            table(console, f"latency table: {t.describe()}", ["group", "channels", "staircase widths",
                                                              "ms saved at the narrowest"], rows)
            console.print(f"base {s['base_ms']:.4g} ms; {s['measured_points']} points measured, "
                          f"{s['cached_points']} from {s['cache_file']}")

        return result, render

    execute(body, json_=json_, debug=debug)
