"""Read a :class:`~edgetl.contract.ModelContract` from what a model file (or module) carries.

ONNX gives names, dims (``dim_param`` symbols kept) and dtypes; OpenVINO gives partial shapes with bounds
(its dims have no names: ``?``); TorchScript gives argument names only (shapes need ``--input``);
``torch.export`` programs give names, symbolic dims and their ranges; an ``nn.Module`` run once on example
inputs gives observed shapes and names its outputs from tuple/dict/namedtuple returns. A contract an edgetl
export recorded in the file's metadata (key :data:`METADATA_KEY`) is read back on top: roles, layouts, task,
preprocessing.

Example::

    read_contract("seg.onnx").input("image").shape       # ("N", 1, "H", "W")
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgetl.contract import ANY, InputTensor, ModelContract, OutputTensor, normalize_dtype
from edgetl.errors import ConfigError, InputFileError, MissingDependencyError

__all__ = ["METADATA_KEY", "contract_from_json", "contract_to_json", "embed_onnx", "embed_openvino",
           "from_input_spec", "read_contract", "read_exported_program", "read_module", "resolve_contract", "read_onnx", "read_openvino",
           "read_torchscript", "torchscript_extra_files"]

METADATA_KEY = "edgetl.contract"  # ONNX metadata_props key; OpenVINO rt_info ["edgetl", "contract"]; TorchScript
# extra file "edgetl.contract.json"
ARTIFACT_KEY = "edgetl"  # where exports embed the artifact's whole metadata (ONNX key; OpenVINO ["edgetl", "source"]);
# a "contract" entry in it (or in the NAME.edgetl.json sidecar) is read back too
SIDECAR_SUFFIX = ".edgetl.json"


def _from_payload(text: str | None) -> ModelContract | None:
    """The contract inside an artifact metadata payload (JSON text), if it has one."""
    if not text:
        return None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return None  # someone else's metadata under our key: not ours to read
    return ModelContract.from_dict(payload["contract"]) if isinstance(payload, dict) and "contract" in payload else None


def _sidecar(path: Path) -> ModelContract | None:
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    return _from_payload(side.read_text()) if side.is_file() else None


def contract_to_json(contract: ModelContract) -> str:
    return json.dumps(contract.to_dict(), sort_keys=True)


def contract_from_json(text: str) -> ModelContract:
    try:
        return ModelContract.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise InputFileError(f"the recorded model contract is not valid JSON ({e})") from None


def embed_onnx(model: Any, contract: ModelContract) -> Any:
    """Record ``contract`` in an ``onnx.ModelProto``'s metadata (replacing an earlier one); returns the model."""
    for p in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(p)
    model.metadata_props.add(key=METADATA_KEY, value=contract_to_json(contract))
    return model


def embed_openvino(model: Any, contract: ModelContract) -> Any:
    """Record ``contract`` in an ``ov.Model``'s rt_info (saved into the .xml by ``ov.save_model``)."""
    model.set_rt_info(contract_to_json(contract), ["edgetl", "contract"])
    return model


def torchscript_extra_files(contract: ModelContract) -> dict[str, str]:
    """``torch.jit.save(m, path, _extra_files=...)``: the contract beside the TorchScript code."""
    return {METADATA_KEY + ".json": contract_to_json(contract)}


def from_input_spec(spec: Any, labels: Sequence[str], *, input_name: str = "input",
                    output_name: str = "output") -> ModelContract:
    """The contract of an edgetl classifier described by the older :class:`~edgetl.artifact.InputSpec`: one
    image input ``N x C x H x W`` (values in [0, 1], then mean/std) and one logits output ``N x classes``."""
    layout = spec.layout.upper()
    c, h, w = spec.shape
    shape = {"NCHW": ("N", c, h, w), "NHWC": ("N", h, w, c)}.get(layout)
    if shape is None:
        raise ConfigError(f"input spec layout {spec.layout!r}: valid are NCHW and NHWC")
    image = InputTensor(name=input_name, shape=shape, dtype=spec.dtype, value_range=(0.0, 1.0), mean=spec.mean,
                        std=spec.std, layout=layout, opt_shape=(1, *shape[1:]))
    logits = OutputTensor(name=output_name, shape=("N", len(labels)), role="logits", layout="N,C")
    return ModelContract(inputs=(image,), outputs=(logits,), task="classification", source="input_spec")


def _overlay(found: ModelContract, recorded: ModelContract | None) -> ModelContract:
    """What the file's graph says wins for shapes and dtypes; the recorded contract adds what graphs cannot say."""
    if recorded is None:
        return found
    rin = {t.name: t for t in recorded.inputs}
    rout = {t.name: t for t in recorded.outputs}
    ins = tuple(dataclasses.replace(rin[t.name], shape=t.shape if t.shape is not None else rin[t.name].shape,
                                    dtype=t.dtype or rin[t.name].dtype) if t.name in rin else t for t in found.inputs)
    outs = tuple(dataclasses.replace(t, role=rout[t.name].role, layout=rout[t.name].layout,
                                     box_format=rout[t.name].box_format) if t.name in rout else t
                 for t in found.outputs)
    selected = tuple(s for s in recorded.selected if s in {o.name for o in outs})
    return dataclasses.replace(found, inputs=ins, outputs=outs, task=recorded.task, selected=selected)


def _unnamed(kind: str, i: int, n: int) -> str:
    return kind if n == 1 else f"{kind}{i}"


# --------------------------------------------------------------------------- ONNX
def read_onnx(model: str | Path | Any) -> ModelContract:
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise MissingDependencyError("onnx", "onnx", "reading an ONNX model's inputs") from None
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError/OSError/ValueError alike
            raise InputFileError(f"{model}: not a readable ONNX file ({e})") from None
    g = model.graph
    init = {i.name for i in g.initializer}

    def tensor(v: Any) -> tuple[tuple, str | None]:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or ANY)
                     for d in tt.shape.dim) if tt.HasField("shape") else None
        try:
            dtype = normalize_dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type).name) if tt.elem_type else None
        except Exception:  # a dtype numpy has no name for (bfloat16, float8): say nothing rather than guess
            dtype = None
        return dims, dtype

    ins = tuple(InputTensor(name=v.name, shape=tensor(v)[0], dtype=tensor(v)[1]) for v in g.input if v.name not in init)
    outs = tuple(OutputTensor(name=v.name, shape=tensor(v)[0], dtype=tensor(v)[1]) for v in g.output)
    props = {p.key: p.value for p in model.metadata_props}
    recorded = contract_from_json(props[METADATA_KEY]) if METADATA_KEY in props else _from_payload(
        props.get(ARTIFACT_KEY))
    return _overlay(ModelContract(inputs=ins, outputs=outs, fixed=True, source="onnx"), recorded)


# --------------------------------------------------------------------------- OpenVINO
def read_openvino(model: str | Path | Any) -> ModelContract:
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "reading an OpenVINO model's inputs") from None
    if not isinstance(model, ov.Model):
        try:
            model = ov.Core().read_model(str(model))
        except RuntimeError as e:
            raise InputFileError(f"{model}: OpenVINO cannot read this model ({str(e).splitlines()[0]})") from None

    def tensor(port: Any, kind: str, i: int, n: int, cls: type) -> Any:
        ps = port.get_partial_shape()
        shape = lo = hi = None
        if ps.rank.is_static:
            shape = tuple(d.get_length() if d.is_static else ANY for d in ps)
            lo = tuple(d.get_min_length() if d.is_static or d.get_min_length() > 0 else None for d in ps)
            hi = tuple(d.get_max_length() if d.get_max_length() >= 0 else None for d in ps)
        names = sorted(port.get_names())
        name = port.get_any_name() if names else _unnamed(kind, i, n)
        kw: dict[str, Any] = {"name": name, "shape": shape, "dtype": port.get_element_type().get_type_name()}
        if cls is InputTensor and shape is not None and ANY in shape:
            bounded = [a for a, d in enumerate(shape) if d == ANY and (lo[a] is not None or hi[a] is not None)]
            if bounded:
                kw.update(min_shape=lo, max_shape=hi)
        if kw["dtype"] in ("dynamic", "undefined"):
            kw["dtype"] = None
        return cls(**kw)

    ins = tuple(tensor(p, "input", i, len(model.inputs), InputTensor) for i, p in enumerate(model.inputs))
    outs = tuple(tensor(p, "output", i, len(model.outputs), OutputTensor) for i, p in enumerate(model.outputs))
    recorded = None
    if model.has_rt_info(["edgetl", "contract"]):
        recorded = contract_from_json(str(model.get_rt_info(["edgetl", "contract"]).astype(str)))
    elif model.has_rt_info(["edgetl", "source"]):
        recorded = _from_payload(str(model.get_rt_info(["edgetl", "source"]).astype(str)))
    return _overlay(ModelContract(inputs=ins, outputs=outs, fixed=True, source="openvino"), recorded)


# --------------------------------------------------------------------------- TorchScript
def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript(model: str | Path | Any) -> ModelContract:
    """Argument names (and scalar arguments) from ``forward``'s schema; tensor shapes are not in the file."""
    import torch

    extra = {METADATA_KEY + ".json": ""}
    if isinstance(model, (str, Path)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation notice
                model = torch.jit.load(str(model), map_location="cpu", _extra_files=extra)
        except RuntimeError as e:
            raise InputFileError(f"{model}: not a readable TorchScript archive ({str(e).splitlines()[0]})") from None
    schema = model.forward.schema
    ins = []
    for a in schema.arguments[1:]:  # [0] is self
        kind = str(a.type)
        if kind in ("int", "float", "bool"):
            ins.append(InputTensor(name=a.name, shape=(), dtype={"int": "int64", "float": "float32"}.get(kind, "bool")))
        else:
            ins.append(InputTensor(name=a.name))
    returns = schema.returns[0].type if schema.returns else None
    outs: tuple[OutputTensor, ...] = ()
    if returns is not None and str(returns) == "Tensor":
        outs = (OutputTensor(name="output"),)
    elif returns is not None and type(returns).__name__ == "TupleType":
        n = len(returns.elements())
        outs = tuple(OutputTensor(name=_unnamed("output", i, n)) for i in range(n))
    recorded = contract_from_json(extra[METADATA_KEY + ".json"]) if extra[METADATA_KEY + ".json"] else None
    return _overlay(ModelContract(inputs=tuple(ins), outputs=outs, fixed=True, source="torchscript"), recorded)


# --------------------------------------------------------------------------- torch.export
def _leaf_names(spec: Any, prefix: str = "") -> list[str]:
    """Names of a pytree's leaves: dict keys, namedtuple fields, positions (``output0``), dotted when nested."""
    if spec.is_leaf():
        return [prefix or "output"]
    children = list(spec.children()) if hasattr(spec, "children") else list(spec.children_specs)
    if spec.type is dict or (isinstance(spec.type, type) and issubclass(spec.type, Mapping)):
        keys = [str(k) for k in spec.context]
    elif hasattr(spec.context, "_fields"):  # torch's pytree keeps a namedtuple's class as the context
        keys = list(spec.context._fields)
    elif hasattr(spec.type, "_fields"):
        keys = list(spec.type._fields)
    else:
        keys = [str(i) for i in range(len(children))]
        if not prefix:
            keys = [_unnamed("output", i, len(children)) for i in range(len(children))]
    names: list[str] = []
    for k, child in zip(keys, children, strict=False):
        names += _leaf_names(child, f"{prefix}.{k}" if prefix else k)
    return names


def _fake_shape(val: Any) -> tuple[tuple | None, str | None]:
    import torch

    if isinstance(val, torch.Tensor):
        return tuple(int(d) if isinstance(d, int) else str(d) for d in val.shape), normalize_dtype(str(val.dtype))
    if isinstance(val, (int, torch.SymInt)):
        return (), "int64"
    if isinstance(val, (float, torch.SymFloat)):
        return (), "float32"
    return None, None


def read_exported_program(program: str | Path | Any) -> ModelContract:
    """User inputs with symbolic dims (the program's own symbols, e.g. ``s40``) and their ranges as min/max."""
    import torch
    from torch.export.graph_signature import InputKind, OutputKind

    if isinstance(program, (str, Path)):
        try:
            program = torch.export.load(str(program))
        except Exception as e:  # torch.export.load raises many kinds for a foreign file
            raise InputFileError(f"{program}: not a readable torch.export program ({e})") from None
    ranges = {str(k): v for k, v in program.range_constraints.items()}
    nodes = {n.name: n for n in program.graph.nodes}

    def bound(d: Any, attr: str) -> int | None:
        if isinstance(d, int):
            return d
        r = ranges.get(d)
        v = getattr(r, attr, None) if r is not None else None
        try:
            return int(v) if v is not None and abs(int(v)) < 2**62 else None
        except (TypeError, ValueError, OverflowError):  # int_oo, symbolic bounds
            return None

    ins = []
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        shape, dtype = _fake_shape(nodes[spec.arg.name].meta.get("val"))
        kw: dict[str, Any] = {}
        if shape and any(isinstance(d, str) for d in shape):
            kw = {"min_shape": tuple(bound(d, "lower") for d in shape),
                  "max_shape": tuple(bound(d, "upper") for d in shape)}
        ins.append(InputTensor(name=spec.arg.name, shape=shape, dtype=dtype, **kw))
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    out_vals = {getattr(a, "name", None): a.meta.get("val") for a in out_node.args[0] if hasattr(a, "meta")}
    user = [s for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    names = _leaf_names(program.call_spec.out_spec) if program.call_spec.out_spec is not None else []
    if len(names) != len(user):
        names = [_unnamed("output", i, len(user)) for i in range(len(user))]
    outs = tuple(OutputTensor(name=n, shape=_fake_shape(out_vals.get(s.arg.name))[0],
                              dtype=_fake_shape(out_vals.get(s.arg.name))[1]) for n, s in zip(names, user, strict=False))
    return ModelContract(inputs=tuple(ins), outputs=outs, fixed=True, source="pt2")


# --------------------------------------------------------------------------- nn.Module
def _flatten_outputs(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = list(zip(out._fields, out, strict=False))
    elif isinstance(out, (tuple, list)):
        items = [(str(i) if prefix else _unnamed("output", i, len(out)), v) for i, v in enumerate(out)]
    else:
        raise ConfigError(f"the model returned a {type(out).__name__}; edgetl reads tensors, or tuples, lists, dicts "
                          "and namedtuples of tensors")
    flat: list[tuple[str, Any]] = []
    for k, v in items:
        flat += _flatten_outputs(v, f"{prefix}.{k}" if prefix else k)
    return flat


def module_input_names(module: Any, n: int) -> list[str]:
    """The names of ``forward``'s first ``n`` positional parameters (``input0..`` behind ``*args``)."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= n:
        return [p.name for p in params[:n]]
    return [_unnamed("input", i, n) for i in range(n)]


def read_module(module: Any, example_inputs: Mapping[str, Any] | Sequence[Any] | Any) -> ModelContract:
    """Run ``module`` once (no grad) on ``example_inputs`` (a dict by name, a tuple, or one tensor) and record
    the shapes seen; they are observations, not constraints (``fixed=False``)."""
    import torch

    if isinstance(example_inputs, Mapping):
        named = dict(example_inputs)
    else:
        seq = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        named = dict(zip(module_input_names(module, len(seq)), seq, strict=False))
    with torch.no_grad():
        out = module(**named)
    ins = tuple(InputTensor(name=k, shape=_fake_shape(v)[0], dtype=_fake_shape(v)[1]) for k, v in named.items())
    outs = tuple(OutputTensor(name=k, shape=tuple(v.shape), dtype=normalize_dtype(str(v.dtype)))
                 for k, v in _flatten_outputs(out))
    return ModelContract(inputs=ins, outputs=outs, fixed=False, source="module")


def read_contract(model: str | Path | Any, example_inputs: Any = None) -> ModelContract:
    """Dispatch on what ``model`` is: a path (``.onnx``, ``.xml``, ``.pt2``, TorchScript) or a loaded object.
    For a path, a contract recorded in its ``NAME.edgetl.json`` sidecar fills what the file does not say."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise InputFileError(f"model not found: {path}")
        suffix = path.suffix.lower()
        readers = {".onnx": read_onnx, ".xml": read_openvino, ".pt2": read_exported_program}
        reader = readers.get(suffix) or (read_torchscript if _is_torchscript(path) else None)
        if reader is not None:
            found = reader(path)
            side = _sidecar(path)
            return _overlay(found, side)
        raise InputFileError(f"{path}: no model contract can be read from a {suffix or 'suffix-less'} file; give an "
                             ".onnx, OpenVINO .xml, .pt2 or TorchScript file, or load the checkpoint and read the module")
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return read_torchscript(model)
    if isinstance(model, torch.export.ExportedProgram):
        return read_exported_program(model)
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ConfigError("a module's contract is read by running it once; give its example inputs "
                              "(--input NAME:SHAPE, or --data)")
        return read_module(model, example_inputs)
    return read_onnx(model) if type(model).__name__ == "ModelProto" else read_openvino(model)


def _forward_inputs(module: Any) -> tuple[InputTensor, ...]:
    """One unknown input per required positional parameter of ``forward`` (named as the code names them)."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return tuple(InputTensor(name=p.name) for p in params)


def resolve_contract(model: Any, flags: Any = None, *, data: Mapping[str, Any] | None = None,
                     base: ModelContract | None = None) -> ModelContract:
    """The one call a stage makes: the model's contract from its file (or, for an ``nn.Module``, from its
    ``forward`` signature, ``base`` and one run on example inputs), completed by the user's ``flags``
    (:class:`~edgetl.contract.ContractFlags`) and checked. ``data`` gives real values for inputs that cannot be
    made up (``{"sr": np.array(16000)}``). Every contradiction or missing fact is one ConfigError line."""
    import torch

    from edgetl.contract import ContractFlags, merge
    from edgetl.contract_shapes import check_runs

    flags = flags if flags is not None else ContractFlags()
    is_module = isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule)
    if not is_module:
        return merge(read_contract(model), flags)
    names = _forward_inputs(model)
    seed_inputs = names
    if base is not None:  # a recorded or InputSpec contract: its facts, under the names forward uses
        known = base.inputs
        if len(known) == len(names) == 1 and known[0].name != names[0].name:
            known = (dataclasses.replace(known[0], name=names[0].name),)
        seed_inputs = known
    recorded = base is not None and base.source == "checkpoint"  # sizes the saved weights fix: not overridable
    seed = ModelContract(inputs=seed_inputs, outputs=base.outputs if base else (), task=base.task if base else
                         "generic", selected=base.selected if base else (), fixed=recorded, source="module")
    declared = merge(seed, dataclasses.replace(flags, outputs=(), roles=()))  # outputs are known after the run

    def run(feed: dict[str, Any]) -> ModelContract:
        model_inputs = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in feed.items()}
        return read_module(model, model_inputs)

    observed = check_runs(declared, run, inputs=data)
    outputs = observed.outputs
    if seed.outputs:  # keep recorded roles and layouts, by name, over the bare observation
        recorded = {o.name: o for o in seed.outputs}
        outputs = tuple(dataclasses.replace(recorded[o.name], shape=o.shape, dtype=o.dtype) if o.name in recorded
                        else o for o in outputs)
    keep = tuple(s for s in seed.selected if s in {o.name for o in outputs})
    return merge(dataclasses.replace(declared, outputs=outputs, selected=keep), flags)
