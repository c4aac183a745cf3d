"""edgetl's own checkpoint: tensors, the architecture's name (and constructor arguments) and every layer's width,
so a model whose channels were changed by pruning reloads with ``torch.load(weights_only=True)``, no pickled code.

A zoo architecture is rebuilt by name. Your own architecture (``module.path:ClassName``, :mod:`edgetl.user_arch`)
is recorded with its ``--arch-args``; loading it again needs the same ``--arch`` from the user, because naming
it imports that module's code, and a checkpoint must never make edgetl import code on its own.

Example::

    save_model(pruned, "pruned.pt")                             # structure + state dict (+ contract)
    load_model("pruned.pt", arch="mypkg.nets:TinyDet")          # own architecture: named again
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.errors import ConfigError, InputFileError, ModelError, UnsafeCheckpointError
from edgetl.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.contract import ModelContract

__all__ = ["CHECKPOINT_KIND", "CHECKPOINT_VERSION", "conform_to_state_dict", "save_model", "structure"]

CHECKPOINT_KIND = "edgetl-model"
CHECKPOINT_VERSION = 1

# Module attributes that describe layer widths; recorded so that pruned models rebuild exactly.
_WIDTH_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "in_features",
    "out_features",
    "num_channels",
    "num_groups",
    "normalized_shape",
    "num_parameters",  # PReLU
)


def structure(model) -> dict[str, dict[str, Any]]:
    """Every module's width attributes (``{"features.0": {"in_channels": 3, "out_channels": 16, ...}}``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        attrs = {}
        for a in _WIDTH_ATTRS:
            v = getattr(mod, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                attrs[a] = v
            elif isinstance(v, tuple) and all(isinstance(i, int) for i in v):
                attrs[a] = list(v)
        if attrs:
            out[name] = attrs
    return out


def save_model(artifact: Artifact, path: str | Path, *, unsafe_pickle: bool = False) -> Path:
    """Save a PyTorch artifact as an edgetl checkpoint (atomic).

    Zoo-derived models and models of your own architecture (``artifact.arch`` is ``module:Class``) are stored as
    tensors plus layer widths (and the constructor arguments, the model contract) and reload without unpickling
    code. A model of unknown architecture needs ``unsafe_pickle=True`` (and will need it again to load).
    """
    import torch

    if artifact.format is not Format.TORCH or artifact.model is None:
        raise ModelError(f"save_model stores PyTorch modules; this artifact is {artifact.format.value}")
    path = Path(path)
    payload: dict[str, Any] = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "arch": artifact.arch,
        "labels": list(artifact.labels),
        "input_spec": artifact.input_spec.to_dict() if artifact.input_spec is not None else None,
        "history_json": json.dumps([r.to_dict() for r in artifact.history], default=str),
        "extra_json": json.dumps(artifact.extra, default=str),
    }
    if artifact.input_spec is None and artifact.contract is not None:  # a spec's contract is rebuilt on load
        payload["contract_json"] = json.dumps(artifact.contract.to_dict())
    model = artifact.model
    if artifact.arch is not None:
        payload["structure"] = structure(model)
        payload["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif unsafe_pickle:
        payload["pickled_module"] = model
    else:
        raise ModelError(
            f"cannot save {type(model).__name__} without pickling its code: it is not from the zoo. Load it with "
            "--arch module.path:ClassName (your own architecture) to save tensors and widths only, pass "
            "unsafe_pickle=True (--unsafe-pickle), or export it (edgetl export) instead"
        )
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_state(model, state, path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputFileError(f"{path}: weights do not fit the architecture ({first[0][:300] if first else e})") \
            from None


def _recorded_contract(obj: dict) -> ModelContract | None:
    text = obj.get("contract_json")
    if not text:
        return None
    import dataclasses

    from edgetl.contract import ModelContract

    # The recorded ranks and fixed sizes are facts of these weights (a pruned width, a frame length): a flag that
    # contradicts them is refused like one that contradicts a file; symbolic dims stay free.
    return dataclasses.replace(ModelContract.from_dict(json.loads(text)), fixed=True, source="checkpoint")


def _checkpoint_model(path: Path, obj: dict, *, arch: str | None, arch_args: dict | None, n_labels: int):
    """Build the recorded architecture and conform it to the recorded widths and tensors."""
    from edgetl.user_arch import build_user_arch, is_user_arch

    recorded = obj.get("arch")
    if recorded is None:
        raise InputFileError(f"{path}: edgetl checkpoint without architecture; re-save it")
    extra = json.loads(obj.get("extra_json", "{}"))
    if is_user_arch(recorded):
        if arch != recorded:
            said = f"--arch {arch} was given" if arch else "no --arch was given"
            raise ConfigError(f"{path} was saved from your own architecture {recorded}; {said}. Pass --arch "
                              f"{recorded} to import that code (a checkpoint never imports code by itself)")
        args = arch_args if arch_args else extra.get("arch_args", {})
        model = build_user_arch(recorded, args)
    else:
        from edgetl.models import build_arch

        model = build_arch(recorded, num_classes=n_labels)
    conform_to_state_dict(model, obj["state_dict"], structure=obj.get("structure"))
    load_state(model, obj["state_dict"], path)
    return model


def from_checkpoint(path: Path, obj: dict, *, arch: str | None = None, arch_args: dict | None = None) -> Artifact:
    """The artifact an edgetl checkpoint (already read with ``weights_only=True``) describes."""
    from edgetl.artifact import StageRecord

    if "pickled_module" in obj:  # only reachable through an unsafe load path
        raise UnsafeCheckpointError(f"{path} holds a pickled module; pass --unsafe-pickle if you trust it")
    spec = InputSpec.from_dict(obj["input_spec"]) if obj.get("input_spec") else None
    labels = tuple(obj["labels"])
    history = [StageRecord.from_dict(d) for d in json.loads(obj.get("history_json", "[]"))]
    extra = json.loads(obj.get("extra_json", "{}"))
    model = _checkpoint_model(path, obj, arch=arch, arch_args=arch_args, n_labels=len(labels))
    contract = _recorded_contract(obj)
    if spec is None and contract is None:
        from edgetl.user_arch import module_contract

        contract = module_contract(model)
    return Artifact(format=Format.TORCH, model=model.eval(), arch=obj["arch"], input_spec=spec, labels=labels,
                    history=history, extra=extra, path=None, contract=contract)


def conform_to_state_dict(model, state: dict, *, structure: dict | None = None) -> None:
    """Resize the modules of a freshly built ``model`` so that ``state`` (e.g. a pruned one) loads into it.

    With ``structure`` (from an edgetl checkpoint) the recorded widths are applied exactly; otherwise they are
    inferred from the weight shapes (a depthwise conv stays depthwise).
    """
    import torch
    import torch.nn as nn

    modules = dict(model.named_modules())
    for name, attrs in (structure or {}).items():
        mod = modules.get(name)
        if mod is None:
            raise ModelError(f"checkpoint names a layer {name!r} that the architecture lacks")
        for a, v in attrs.items():
            setattr(mod, a, tuple(v) if isinstance(v, list) else v)
    for name, mod in modules.items():
        prefix = f"{name}." if name else ""
        for pname, p in list(mod.named_parameters(recurse=False)):
            new = state.get(prefix + pname)
            if new is not None and new.shape != p.shape:
                setattr(mod, pname, nn.Parameter(torch.empty(new.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        for bname, b in list(mod.named_buffers(recurse=False)):
            new = state.get(prefix + bname)
            if b is not None and new is not None and new.shape != b.shape:
                mod.register_buffer(bname, torch.empty(new.shape, dtype=b.dtype))
        if structure is None:
            _infer_widths(mod)


def _infer_widths(mod) -> None:
    import torch.nn as nn

    if isinstance(mod, nn.modules.conv._ConvNd):
        w = mod.weight
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels
        out_c = w.shape[0]
        if depthwise:
            mult = max(1, mod.out_channels // mod.groups)
            mod.groups = out_c // mult
            mod.in_channels = mod.groups
        else:
            mod.in_channels = w.shape[1] * mod.groups
        mod.out_channels = out_c
    elif isinstance(mod, nn.modules.batchnorm._NormBase) and getattr(mod, "weight", None) is not None:
        mod.num_features = mod.weight.shape[0]
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, nn.PReLU):
        mod.num_parameters = mod.weight.shape[0]
