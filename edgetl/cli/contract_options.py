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
MinShapeFlag = Annotated[Optional[list[str]], typer.Option(
    "--min-shape", help="The smallest shape of a dynamic input: NAME:1x3x32x32 (TensorRT profile); repeatable.")]
MaxShapeFlag = Annotated[Optional[list[str]], typer.Option(
    "--max-shape", help="The largest shape of a dynamic input: NAME:1x3x640x640 (TensorRT profile, ExecuTorch "
    "upper bound); repeatable.")]
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


def load_with_arch(model: str, *, arch: str | None, arch_args: str | dict[str, Any] | None,
                   unsafe_pickle: bool = False) -> Any:
    """The model, with ``--arch`` (a zoo name or ``module.path:ClassName``) and ``--arch-args JSON``: the one loader
    of the commands that take both (bad JSON, an unknown module or class is one line, exit 2)."""
    from edgetl.models import load_model
    from edgetl.user_arch import parse_arch_args

    args = parse_arch_args(arch_args)
    return load_model(model, arch=arch, unsafe_pickle=unsafe_pickle, arch_args=args or None)


def contract_flags(*, inputs=None, opt_shapes=None, outputs=None, roles=None, task=None, min_shapes=None,
                   max_shapes=None) -> Any:
    from edgetl.contract import parse_flags

    return parse_flags(inputs=inputs or (), opt_shapes=opt_shapes or (), outputs=outputs or (), roles=roles or (),
                       task=task, min_shapes=min_shapes or (), max_shapes=max_shapes or ())


def flags_given(flags: Any) -> bool:
    return bool(flags.inputs or flags.opt_shapes or flags.min_shapes or flags.max_shapes or flags.outputs
                or flags.roles or flags.task)


def with_contract(art: Any, flags: Any) -> Any:
    """``art`` with its contract completed by ``flags`` and checked against the file (one ConfigError line)."""
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for

    contract = contract_for(art, flags)
    if art.input_spec is None:
        require(contract, shapes=True)
    art.contract = contract
    return art


def check_export_shapes(art: Any, formats: str) -> None:
    """Before any export work: the bounds a format needs from a model by its contract (ExecuTorch's upper bound
    per dynamic dim, TensorRT's min/opt/max per dynamic input), each missing one a line naming the flag."""
    from edgetl.contract_shapes import executorch_upper_bounds, tensorrt_profiles

    if art.input_spec is not None or art.contract is None:
        return
    names = {f.strip().lower() for f in formats.split(",")}
    if "executorch" in names:
        executorch_upper_bounds(art.contract)
    if "tensorrt" in names and not all(t.is_static for t in art.contract.inputs):
        tensorrt_profiles(art.contract)


def contract_of(art: Any, flags: Any, data: str | None = None, *, what: str = "MODEL") -> Any:
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
        return contract_for(art, flags, what=what)
    except ConfigError as e:
        if data is None or getattr(art.model, "forward", None) is None:
            raise
        first_error = e
    from edgetl.errors import EdgetlError

    try:
        first = _first_sample(art, flags, data)
    except EdgetlError:
        raise first_error from None  # the data cannot be read either: what the contract lacks is the first fact
    return contract_for(art, flags, data=first)


def _first_sample(art: Any, flags: Any, data: str) -> dict[str, Any]:
    """The first sample of ``data`` read against the inputs the model declares (a recorded contract, else the
    parameters of ``forward``) as the flags complete them."""
    import dataclasses
    import inspect

    from edgetl.contract import InputTensor, ModelContract, merge
    from edgetl.inputs import load_inputs

    base = art.contract
    if base is None or not base.inputs:
        params = [p for p in inspect.signature(art.model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        base = ModelContract(inputs=tuple(InputTensor(name=p.name) for p in params), fixed=False)
    declared = merge(ModelContract(inputs=base.inputs, fixed=False), dataclasses.replace(flags, outputs=(), roles=()))
    return load_inputs(data, contract=declared, limit=1).samples[0]


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
    from edgetl.evaluate_contract import describe_contract, evaluate_contract
    from edgetl.fidelity import resolve_metric
    from edgetl.inputs import load_inputs
    from edgetl.models import load_model

    contract = contract_of(art, flags, data)  # a PyTorch model runs once on the first sample where it must
    require(contract, shapes=True)
    if metric is not None:
        resolve_metric(metric)  # an unimportable metric is refused before any work
    ref_art = ref_contract = None
    if reference is not None:
        ref_art = load_model(reference, arch=arch, unsafe_pickle=unsafe_pickle, arch_args=arch_args)
        _inputs_from(ref_art, contract)
        ref_contract = contract_of(ref_art, flags, data, what="--reference")
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


def _inputs_from(ref_art: Any, contract: Any) -> None:
    """A PyTorch reference that names the model's inputs but knows none of their shapes (a state dict of the same
    ``--arch``) takes the model's inputs, so a pruned checkpoint compares with its source without flags."""
    import dataclasses

    c = ref_art.contract
    if (ref_art.model is not None and c is not None and c.input_names == contract.input_names
            and all(t.shape is None for t in c.inputs)):
        ref_art.contract = dataclasses.replace(c, inputs=contract.inputs)


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
