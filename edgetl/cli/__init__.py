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

_LATER = {
    "prune": "structured LRP pruning",
    "distill": "knowledge distillation",
    "quantize": "int8/fp16 post-training quantization",
    "export": "ONNX / OpenVINO / TensorRT / mobile export",
    "bench": "latency benchmarks",
    "devices": "device profiles",
    "report": "benchmark reports",
    "run": "recipes that chain the stages",
}


def _register_stages() -> None:
    import importlib

    for name, what in _LATER.items():
        try:
            module = importlib.import_module(f"edgetl.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name != f"edgetl.cli.{name}_cmd":
                raise
            from edgetl.cli._common import not_yet

            app.command(name, help=f"{what.capitalize()} (not yet available).")(not_yet(name, what))
        else:
            module.register(app)


_register_stages()


def main() -> None:
    app()
