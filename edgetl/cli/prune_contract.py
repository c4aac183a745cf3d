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
            if not wanted(said, model[0] if isinstance(model, list) else model, kwargs.get("arch")):
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


def wanted(said: dict[str, Any], model: str, arch: str | None = None) -> bool:
    """A contract flag, or a model that is not a one-input one-output classifier with labels (peeked at; a model
    that does not load goes down the classic path, which says why)."""
    if any(v for v in said.values()):
        return True
    from edgetl.errors import EdgetlError
    from edgetl.models import load_model

    try:
        art = load_model(model, arch=arch)
    except EdgetlError:
        return False
    return co.wants_contract(co.contract_flags(), art, reference=None, metric=None)


def contract_of(art: Any, flags: Any, data: str | None = None) -> Any:
    """The artifact's contract, completed by the flags; an edgetl checkpoint of a non-classifier (no labels) gives
    its input from the recorded input spec. Where the model cannot be run on made-up inputs (an integer sample
    rate, a dynamic size without --opt-shape), it runs once on the first sample of ``data``, read against the
    inputs the flags declare."""
    from edgetl.contract import ModelContract
    from edgetl.contract_read import from_input_spec
    from edgetl.errors import ConfigError
    from edgetl.evaluate_contract import contract_for

    if art.contract is None and art.input_spec is not None:
        spec_inputs = from_input_spec(art.input_spec, ("_",), input_name="image").inputs
        art.contract = ModelContract(inputs=spec_inputs, fixed=False, source="input_spec")
    try:
        return contract_for(art, flags)
    except ConfigError as e:
        if data is None:
            raise
        first_error = e
    try:
        first = _first_sample(art, flags, data)
    except ConfigError:
        raise first_error from None  # the data cannot be read either: what the contract lacks is the first fact
    return contract_for(art, flags, data=first)


def _first_sample(art: Any, flags: Any, data: str) -> dict[str, Any]:
    """The first sample of ``data`` read against the inputs of ``forward`` as the flags declare them."""
    import dataclasses
    import inspect

    from edgetl.contract import InputTensor, ModelContract, merge
    from edgetl.inputs import load_inputs

    params = [p for p in inspect.signature(art.model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    declared = merge(ModelContract(inputs=tuple(InputTensor(name=p.name) for p in params), fixed=False),
                     dataclasses.replace(flags, outputs=(), roles=()))
    return load_inputs(data, contract=declared, limit=1).samples[0]


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
        from edgetl.models import load_model, save_model
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
        art = load_model(kwargs["model"], arch=kwargs.get("arch"))
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
