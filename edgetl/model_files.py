"""Loading models from exported files: ONNX, OpenVINO IR, ORT, ExecuTorch, TFLite, TensorRT engines and build
bundles, ``torch.export`` programs, and modules of unknown architecture. :func:`edgetl.models.load_model`
dispatches here by the format table's suffixes; the metadata comes from the ``NAME.edgetl.json`` sidecar.

Example::

    read_sidecar(Path("model.onnx"))["input_spec"]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format, InputSpec, StageRecord
from edgetl.errors import InputFileError
from edgetl.formats import SIDECAR_SUFFIX

__all__ = ["attach_contract", "read_sidecar"]

log = logging.getLogger(__name__)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The ``NAME.edgetl.json`` metadata written beside an exported file, if any."""
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.exists():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(f"{side}: unreadable metadata sidecar ({e}); delete or re-export it") from None


def _from_exported_program(path: Path, *, input_spec, labels) -> Artifact:
    import torch

    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise InputFileError(f"{path}: not a readable torch.export program ({type(e).__name__}: {_first_line(e)})") from None
    shape = _ep_input_shape(ep)
    module = _exported_module(ep.module(), _static_batch(ep, shape))
    return _plain_module_artifact(module, path, Format.TORCH, input_spec, labels, extra={"exported_program": True},
                                  example_shape=shape)


def _exported_module_class():
    import torch.nn as nn

    class ExportedModule(nn.Module):
        """A ``torch.export`` program's module. Its train/eval behaviour was fixed when it was exported, and
        the module refuses ``eval()``; here ``eval()``/``train()`` only set the flag, so every stage can call
        them. A program exported with a static batch runs larger batches in chunks of that batch."""

        def __init__(self, program, batch: int | None = None) -> None:
            super().__init__()
            self.program, self.batch = program, batch

        def forward(self, x):
            import torch

            b = self.batch
            if not b or x.shape[0] == b:
                return self.program(x)
            n = x.shape[0]
            pad = (-n) % b
            if pad:
                x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            return torch.cat([self.program(c) for c in torch.split(x, b)])[:n]

        def train(self, mode: bool = True):
            self.training = bool(mode)
            return self

    return ExportedModule


def _exported_module(program, batch: int | None):
    return _exported_module_class()(program, batch)


def _static_batch(ep, shape) -> int | None:
    """The program's batch size when it was exported with a static one (None: dynamic, or unknown)."""
    if not shape:
        return None
    try:
        for spec in ep.graph_signature.input_specs:
            if spec.kind.name == "USER_INPUT":
                node = next(n for n in ep.graph.nodes if n.name == spec.arg.name)
                first = node.meta["val"].shape[0]
                return int(first) if isinstance(first, int) else None
    except Exception:  # noqa: BLE001 - then larger batches are not chunked
        return None
    return None


def _ep_input_shape(ep) -> tuple[int, ...] | None:
    try:
        for spec in ep.graph_signature.input_specs:
            if spec.kind.name == "USER_INPUT":
                node = next(n for n in ep.graph.nodes if n.name == spec.arg.name)
                return tuple(int(s) for s in node.meta["val"].shape)
    except Exception:  # noqa: BLE001 - shape is a convenience only
        return None
    return None


def _plain_module_artifact(model, path: Path, fmt: Format, input_spec, labels, *, extra, example_shape=None):
    """A module of unknown architecture: input spec from the user, the sidecar, or the example shape."""
    side = read_sidecar(path) or {}
    spec = input_spec or (InputSpec.from_dict(side["input_spec"]) if side.get("input_spec") else None)
    if spec is None and example_shape is not None and len(example_shape) == 4 and example_shape[1] == 3:
        spec = InputSpec(shape=tuple(example_shape[1:]))
    if spec is None:
        contract = file_contract(path) if path.is_file() else None
        if contract is not None and (len(contract.inputs) != 1 or not _runs_as_rgb_224(model)):
            # not an RGB classifier: no guess; the contract (completed by --input) says what it takes
            return Artifact(format=fmt, model=model, arch=side.get("arch"), input_spec=None,
                            labels=tuple(labels or side.get("labels") or ()), extra=extra, contract=contract)
        spec = InputSpec(shape=(3, 224, 224))
        log.warning("%s carries no input spec; assuming 3x224x224 with ImageNet normalisation", path)
    labs = labels or side.get("labels")
    if labs is None:
        import torch

        with torch.no_grad():
            out = model(torch.zeros(spec.batch_shape(1)))
        labs = [str(i) for i in range(out.shape[-1])]
    return Artifact(format=fmt, model=model, arch=side.get("arch") if side else None, input_spec=spec,
                    labels=tuple(labs), extra=extra)


def _runs_as_rgb_224(model) -> bool:
    """Whether ``model`` takes one 1x3x224x224 image and returns one N x classes tensor (the legacy guess)."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 224, 224))
    except Exception:  # noqa: BLE001 - any refusal means: not that kind of model
        return False
    return isinstance(out, torch.Tensor) and out.dim() == 2


def _from_exported_file(path: Path, fmt: Format, *, input_spec, labels) -> Artifact:

    side = read_sidecar(path) or {}
    spec = input_spec or (InputSpec.from_dict(side["input_spec"]) if side.get("input_spec") else None)
    if spec is None and fmt is Format.ONNX:
        spec = _onnx_spec(path)
    contract = file_contract(path)
    if contract is None and side.get("contract"):  # a file that cannot say it (.pte, .ort): edgetl's own record
        from edgetl.contract import ModelContract

        contract = ModelContract.from_dict(side["contract"])
    if spec is None and contract is None:
        raise InputFileError(f"{path} has no {path.name}{SIDECAR_SUFFIX} metadata and its inputs cannot be read; "
                             "give them with --input NAME:SHAPE[:DTYPE] so edgetl knows what to feed it")
    labs = labels or side.get("labels")
    if labs is None and contract is None:
        raise InputFileError(f"{path}: unknown number of classes (no {SIDECAR_SUFFIX} sidecar); pass --labels")
    history = [StageRecord.from_dict(d) for d in side.get("history", [])]
    return Artifact(format=fmt, path=path, arch=side.get("arch"), input_spec=spec, labels=tuple(labs or ()),
                    history=history, extra=side.get("extra", {}), contract=contract)


def file_contract(path: Path) -> Any:
    """The contract a model file carries (ONNX, OpenVINO IR, .pt2, TorchScript), None for formats it cannot be
    read from (.ort, .pte, .tflite, engines) or when the reader's package is not installed."""
    from edgetl.contract_read import read_contract
    from edgetl.errors import MissingDependencyError

    try:
        return read_contract(path)
    except (InputFileError, MissingDependencyError):
        return None


def attach_contract(art: Artifact, path: Path | None = None) -> Artifact:
    """``art`` with its contract filled: the file's (``path``), completed for an edgetl classifier (one input,
    one output, an input spec and labels) by what its :class:`InputSpec` says; a module's from its InputSpec."""
    import dataclasses

    from edgetl.contract_read import from_input_spec

    contract = art.contract
    if contract is None and path is not None and path.is_file():
        contract = file_contract(path)
    spec, labels = art.input_spec, art.labels
    if spec is not None and labels:
        classifier = from_input_spec(spec, labels, output_name="logits")  # the name edgetl's exports give it
        if contract is None:
            contract = classifier
        elif len(contract.inputs) == 1 and len(contract.outputs) <= 1 and contract.source != "input_spec" \
                and contract.task.value == "generic":
            ci, co = classifier.inputs[0], classifier.outputs[0]
            inp = contract.inputs[0]
            inp = dataclasses.replace(ci, name=inp.name, shape=inp.shape or ci.shape, dtype=inp.dtype or ci.dtype)
            outs = tuple(dataclasses.replace(co, name=o.name, shape=o.shape or co.shape) for o in contract.outputs)
            contract = dataclasses.replace(contract, inputs=(inp,), outputs=outs or (co,), task="classification")
    if contract is None:
        return art
    art.contract = contract
    return art


def _from_tensorrt_bundle(path: Path, sidecar: Path) -> Artifact:
    """A TensorRT build bundle (ONNX + build.sh, built into an engine on the device): described by its
    engine's metadata sidecar; it runs nowhere until ``build.sh`` has made the engine on the target."""

    try:
        side = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(f"{sidecar}: unreadable bundle metadata ({e}); re-export the bundle") from None
    return Artifact(format=Format.TENSORRT_BUNDLE, path=path, arch=side.get("arch"),
                    input_spec=InputSpec.from_dict(side["input_spec"]), labels=tuple(side["labels"]),
                    history=[StageRecord.from_dict(d) for d in side.get("history", [])], extra=side.get("extra", {}))


def _onnx_spec(path: Path) -> InputSpec | None:
    try:
        import onnx
    except ImportError:
        return None
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise InputFileError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    meta = {p.key: p.value for p in m.metadata_props}
    if "edgetl" in meta:
        recorded = json.loads(meta["edgetl"]).get("input_spec")
        return InputSpec.from_dict(recorded) if recorded else None  # None: a model exported by its contract
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and all(d > 0 for d in dims[1:]):  # an RGB image classifier's input
        return InputSpec(shape=tuple(dims[1:]))
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__
