"""The model-contract options every command can take (``--input``, ``--opt-shape``, ``--output``, ``--role``,
``--task``), and the contract path of ``edgetl eval`` (any model, any task: ``--reference``, ``--metric``).

Example::

    edgetl eval vad.onnx --data vad.npz --reference vad_fp32.onnx --output prob
    edgetl eval det.onnx --task detection --role boxes:boxes:N,A,4:xyxy --role scores:scores --data det.npz \\
        --reference det.xml
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

InputFlag = Annotated[Optional[list[str]], typer.Option(
    "--input", help="An input's shape and dtype: NAME:SHAPE[:DTYPE] (1x3xHxW, scalar); repeatable; the name may be "
    "left out for a one-input model.")]
OptShapeFlag = Annotated[Optional[list[str]], typer.Option(
    "--opt-shape", help="The concrete size of a dynamic input: NAME:1x3x640x640; repeatable.")]
OutputFlag = Annotated[Optional[list[str]], typer.Option(
    "--output", help="Which outputs the metric looks at: NAME[,NAME] (or an index such as 0).")]
RoleFlag = Annotated[Optional[list[str]], typer.Option(
    "--role", help="What an output holds: NAME:ROLE[:LAYOUT[:BOXFORMAT]] (logits, boxes, scores, mask, sequence, "
    "embedding, state, other); repeatable.")]
TaskFlag = Annotated[Optional[str], typer.Option(
    "--task", help="classification, detection, segmentation, sequence, embedding or generic.")]
MetricFlag = Annotated[Optional[str], typer.Option(
    "--metric", help="A user metric module:function(reference, candidate) -> number or dict (needs --reference).")]
ReferenceFlag = Annotated[Optional[str], typer.Option(
    "--reference", help="A second model (the source): label-free fidelity of MODEL against it on the same inputs, "
    "per output.")]
LimitFlag = Annotated[Optional[int], typer.Option("--limit", help="Evaluate at most this many samples.")]


def contract_flags(*, inputs=None, opt_shapes=None, outputs=None, roles=None, task=None) -> Any:
    from edgetl.contract import parse_flags

    return parse_flags(inputs=inputs or (), opt_shapes=opt_shapes or (), outputs=outputs or (), roles=roles or (),
                       task=task)


def flags_given(flags: Any) -> bool:
    return bool(flags.inputs or flags.opt_shapes or flags.outputs or flags.roles or flags.task)


def with_contract(art: Any, flags: Any) -> Any:
    """``art`` with its contract completed by ``flags`` and checked against the file (one ConfigError line)."""
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for

    contract = contract_for(art, flags)
    if art.input_spec is None:
        require(contract, shapes=True)
    art.contract = contract
    return art


def wants_contract(flags: Any, art: Any, *, reference: str | None, metric: str | None) -> bool:
    """The contract path of eval: any contract flag, a reference or metric, or a model that is not a one-input
    one-output classifier with an input spec. Otherwise the classic top-1 evaluation runs unchanged."""
    said = flags_given(flags)
    c = art.contract
    plain = art.input_spec is not None and bool(art.labels) and (c is None or (len(c.inputs) == 1
                                                                             and len(c.outputs) <= 1))
    return said or reference is not None or metric is not None or not plain


def contract_eval(model: str, art: Any, flags: Any, *, data: str, reference: str | None, metric: str | None,
                  runtime: str | None, threads: int | None, limit: int | None, arch: str | None,
                  unsafe_pickle: bool, arch_args: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """The contract path of ``edgetl eval``: (result, render). Every check comes before the first run."""
    from edgetl.cli._common import table
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for, describe_contract, evaluate_contract
    from edgetl.fidelity import resolve_metric
    from edgetl.inputs import load_inputs
    from edgetl.models import load_model

    contract = contract_for(art, flags)
    require(contract, shapes=True)
    if metric is not None:
        resolve_metric(metric)  # an unimportable metric is refused before any work
    ref_art = ref_contract = None
    if reference is not None:
        ref_art = load_model(reference, arch=arch, unsafe_pickle=unsafe_pickle, arch_args=arch_args)
        ref_contract = contract_for(ref_art, flags, what="--reference")
        if ref_contract.input_names != contract.input_names:
            raise_names(ref_contract, contract)
    inputs = load_inputs(data, contract=contract, model_labels=art.labels or None, limit=limit)
    r = evaluate_contract(art, contract, inputs, reference=ref_art, reference_contract=ref_contract, metric=metric,
                          runtime=runtime, threads=threads)
    result = {"model": model, "format": art.format.value, "data": inputs.origin, "reference": reference,
              "contract": describe_contract(contract), **r.to_dict()}

    def render(console):
        head = r.headline
        rows = [[model, r.task, str(r.samples),
                 f"{head.metric} {head.value:.4f} ({head.output})" if head and head.value is not None else "-",
                 f"{100 * r.accuracy:.2f} %" if r.accuracy is not None else "-"]]
        table(console, "evaluation", ["model", "task", "samples", "fidelity headline", "accuracy"], rows)
        if r.fidelity is not None:
            table(console, f"fidelity against {reference} (outputs matched {r.reference_outputs})",
                  ["output", "cosine", "SNR dB", "max abs", "max rel"],
                  [[o.output, _num(o.cosine), _num(o.snr_db, 1), _num(o.max_abs, 6), _num(o.max_rel, 6)]
                   for o in r.fidelity.outputs])
        for note in r.notes:
            console.print(note)

    return result, render


def raise_names(ref_contract: Any, contract: Any) -> None:
    from edgetl.errors import ConfigError

    raise ConfigError(f"--reference takes inputs {', '.join(ref_contract.input_names)} but the model takes "
                      f"{', '.join(contract.input_names)}; compare models with the same inputs")


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


ArchFlag = Annotated[Optional[str], typer.Option(
    "--arch", help="Architecture of a plain state-dict file: a zoo name, or your own module.path:ClassName "
    "(imports that module).")]
ArchArgsFlag = Annotated[Optional[str], typer.Option(
    "--arch-args", help="Constructor arguments of --arch module.path:ClassName as a JSON object, e.g. "
    "'{\"width\": 16}'.")]
MinSnrFlag = Annotated[Optional[float], typer.Option(
    "--min-snr", help="Fidelity budget of a model quantized by its contract: the lowest SNR in dB any output may "
    "have against the fp32 model.")]
BenchDataFlag = Annotated[Optional[str], typer.Option(
    "--data", "-d", help="Real inputs to time a model by its contract: an .npz named after the inputs, an image "
    "folder or module:function (a sample rate or token ids cannot be made up).")]
