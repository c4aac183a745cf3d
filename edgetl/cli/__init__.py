"""The ``edgetl`` command. Each subcommand lives in its own module and is registered here."""

from __future__ import annotations

import typer

from edgetl.cli import core

app = typer.Typer(
    name="edgetl",
    help="Compress a fine-tuned PyTorch model for an edge device: prune, distill, quantize, export, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

core.register(app)

# Each stage's command lives in its own module; importing them loads no backend (they import lazily).
_STAGE_MODULES = ("prune", "distill", "quantize", "export", "bench", "profile", "devices", "report", "run",
                  "plugins", "package")  # package: package, verify, predict; profile: profile, latency-table


def _register_stages() -> None:
    import importlib

    for name in _STAGE_MODULES:
        importlib.import_module(f"edgetl.cli.{name}_cmd").register(app)


_register_stages()


def main() -> None:
    from edgetl.cli._common import run_app

    run_app(app)
