"""``edgetl prune`` on any model: the contract flags and the label-free path, as one decorator on the command.

``@contract_prune`` adds ``--input``, ``--opt-shape``, ``--outputs`` (which outputs relevance is seeded on and
fidelity compares; ``-o/--output`` is the pruned file), ``--role`` and ``--task``. The classic path (a labelled
one-input classifier) runs unchanged; the contract path runs when a contract flag is given or the model is not
such a classifier: ``--data`` is then read against the model's contract (an image folder with or without class
folders, an ``.npz`` named after the inputs, or ``module:function``), relevance is seeded on the model's own
outputs, every head keeps its shape, and the JSON reports fidelity against the unpruned model (the task's
headline metric) instead of top-1.

Example::

    edgetl prune det.pt --data det.npz --ratio 0.3 --task detection --role output0:boxes:N,A,4:xyxy \\
        --role output1:scores -o det_small.pt --json
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgetl.cli import contract_options as co

__all__ = ["contract_command", "contract_of", "contract_prune", "flags_of", "wanted"]

OutputsFlag = Annotated[Optional[list[str]], typer.Option(
    "--outputs", help="Which outputs relevance is seeded on and fidelity compares: NAME[,NAME] (or an index such "
    "as 0); default: every output but recurrent state.")]

_FLAGS = {"input_": co.InputFlag, "opt_shape": co.OptShapeFlag, "outputs": OutputsFlag, "role": co.RoleFlag,
          "task": co.TaskFlag}


def contract_command(run: Callable[..., Any], *, model_key: str) -> Callable[[Callable], Callable]:
    """A decorator giving a command the contract flags: when :func:`wanted` says so (a flag given, or the model
    named by the command's ``model_key`` option is not a labelled one-input classifier), ``run(said, **options)``
    replaces the command's classic body."""

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values()]
        keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        plain = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        extra = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=a)
                 for n, a in _FLAGS.items()]
        at = next((i for i, p in enumerate(plain) if p.name in ("json_", "debug")), len(plain))
        params = [*plain[:at], *extra, *plain[at:], *keyword]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            said = {n: kwargs.pop(n) for n in _FLAGS}
            model = kwargs[model_key]
            if not wanted(said, model[0] if isinstance(model, list) else model, kwargs.get("arch"),
                          kwargs.get("arch_args")):
                return fn(**kwargs)
            return run(said, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def contract_prune(fn: Callable) -> Callable:
    """Give the prune command the contract flags and its label-free path (module doc)."""
    return contract_command(_run, model_key="model")(fn)


def flags_of(said: dict[str, Any]) -> Any:
    return co.contract_flags(inputs=said["input_"], opt_shapes=said["opt_shape"], outputs=said["outputs"],
                             roles=said["role"], task=said["task"])


def wanted(said: dict[str, Any], model: str, arch: str | None = None, arch_args: str | None = None) -> bool:
    """A contract flag, or a model that is not a one-input one-output classifier with labels (peeked at; a model
    that does not load goes down the classic path, which says why)."""
    if any(v for v in said.values()):
        return True
    from edgetl.errors import EdgetlError

    try:
        art = co.load_with_arch(model, arch=arch, arch_args=arch_args)
    except EdgetlError:
        return False
    return co.wants_contract(co.contract_flags(), art, reference=None, metric=None)


def contract_of(art: Any, flags: Any, data: str | None = None) -> Any:
    """The artifact's contract completed by the flags (and, where needed, the first sample of ``data``):
    :func:`edgetl.cli.contract_options.contract_of`."""
    return co.contract_of(art, flags, data)


def _check_options(kwargs: dict[str, Any], options: dict) -> Path:
    from edgetl.errors import ConfigError
    from edgetl.fileio import check_output

    output: Path = kwargs["output"]
    if output.exists() and not kwargs.get("overwrite"):
        raise ConfigError(f"{output} exists; pass --overwrite to replace it")
    check_output(output)
    if output.suffix.lower() not in (".pt", ".pth"):
        raise ConfigError(f"the pruned model is saved as an edgetl checkpoint; give a .pt output, not {output.name}")
    if "ratio" in options and ("target_flops" in options or "target_params" in options):
        raise ConfigError("give either --ratio or a target (--target-flops / --target-params), not both")
    if kwargs.get("target_latency_ms") is not None or kwargs.get("host"):
        raise ConfigError("--target-latency-ms prunes a labelled classifier today; give --ratio or --target-flops "
                          "for a model scored through its contract")
    return output


def _run(said: dict[str, Any], *, options: dict, json_: bool = False, debug: bool = False, **kwargs: Any) -> None:
    from edgetl.cli._common import execute

    def body():
        import torch

        from edgetl.inputs import load_inputs
        from edgetl.models import save_model
        from edgetl.prune import Scope, layers_matching, prune
        from edgetl.stages import stage_kind

        torch.set_flush_denormal(True)
        flags = flags_of(said)
        output = _check_options(kwargs, options)
        opts = dict(options)
        if opts.get("round_to") == 1:
            opts["round_to"] = None
        ignore = kwargs.get("ignore")
        cfg = stage_kind("prune").config_class()(**opts, scope=Scope.LAYERWISE if kwargs.get("layerwise")
                                                 else Scope.GLOBAL, ignore=layers_matching(*ignore) if ignore else None)
        art = co.load_with_arch(kwargs["model"], arch=kwargs.get("arch"), arch_args=kwargs.get("arch_args"))
        art.contract = contract_of(art, flags, kwargs["data"])
        inputs = load_inputs(kwargs["data"], contract=art.contract, model_labels=art.labels or None)
        pruned = prune(art, cfg, data=inputs)
        save_model(pruned, output)
        return _result(pruned, output, inputs), _render(pruned, output, cfg)

    execute(body, json_=json_, debug=debug)


def _result(pruned: Any, output: Path, inputs: Any) -> dict[str, Any]:
    rec = pruned.history[-1]
    m = rec.metrics
    head = {k: v for k, v in m.items() if k not in ("widths_before", "widths_after")}
    return {"output": str(output), "arch": pruned.arch, "data": inputs.origin, "samples": len(inputs),
            "file_bytes": output.stat().st_size, "seconds": rec.seconds, **head,
            "contract": _describe(pruned.contract), "widths_before": m["widths_before"],
            "widths_after": m["widths_after"]}


def _describe(contract: Any) -> dict[str, Any]:
    from edgetl.evaluate_contract import describe_contract

    return describe_contract(contract)


def _render(pruned: Any, output: Path, cfg: Any) -> Callable[[Any], None]:
    from edgetl.cli._common import table

    rec = pruned.history[-1]
    m = rec.metrics

    def render(console) -> None:
        h = m["headline"]
        table(console, f"pruned with {cfg.criterion} (ratio {m['ratio']:.3f}, task {m['task']})",
              ["", "before", "after", "change"], [
                  ["params", f"{m['params_before']:,}", f"{m['params_after']:,}", f"-{100 * m['params_reduction']:.1f} %"],
                  ["MACs", f"{m['macs_before']:,}", f"{m['macs_after']:,}", f"-{100 * m['flops_reduction']:.1f} %"],
                  [f"{h['metric']} against the unpruned ({h['output']})", "reference",
                   "-" if h["value"] is None else f"{h['value']:.4f}", f"{m['fidelity_samples']} {m['fidelity_on']}"],
              ])
        for s in m["scoring"][:1]:
            for note in s.get("notes", []):
                console.print(f"note: {note}")
        console.print(f"saved {output} ({output.stat().st_size:,} bytes, {rec.seconds:.1f} s)")

    return render
