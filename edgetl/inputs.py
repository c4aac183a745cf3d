"""Real inputs for any model, read against its :class:`~edgetl.contract.ModelContract`.

Three forms, each giving a list of samples (``{input name: array}``, every array the model's full input, batch 1):

- an image folder, flat (unlabeled) or ``DIR/CLASS/IMAGE.png`` (labels by folder name), for a model with one
  image input; images are resized to the contract's H x W and scaled to its value range / mean / std;
- an ``.npz`` whose arrays are named after the inputs (any number, any dtype; the first axis indexes samples, so
  ``state[i]`` is sample i's state), optionally ``labels`` and ``label_names``;
- ``module:function`` returning an iterable of input dicts (optionally with a ``label``).

Labels are matched by name against the model's label list (:func:`map_labels`): the same names in another order
are remapped and the mapping recorded; different names are an error.

Example::

    data = load_inputs("calib.npz", contract=c, model_labels=art.labels)
    data.samples[0]["state"].shape       # (2, 1, 32)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.contract import InputTensor, ModelContract, format_shape
from edgetl.contract_shapes import check_sample, preprocess
from edgetl.errors import ConfigError, DataError, InputFileError, check_names

__all__ = ["InputSet", "LabelMap", "batches", "load_inputs", "map_labels"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_LABEL_KEYS = ("labels", "label_names")


@dataclass(frozen=True)
class LabelMap:
    """How the data's label names map onto the model's: ``index[i]`` is the model index of data label ``i``."""

    model_labels: tuple[str, ...]
    data_labels: tuple[str, ...]
    index: tuple[int, ...]

    @property
    def remapped(self) -> bool:
        return self.index != tuple(range(len(self.index)))

    def apply(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.index, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        return {"remapped": self.remapped,
                "mapping": {d: self.model_labels[i] for d, i in zip(self.data_labels, self.index, strict=True)}}


def map_labels(model_labels: Sequence[str], data_labels: Sequence[str]) -> LabelMap:
    """Match labels by name. Every data label must be one of the model's (a subset is fine: a test set may lack
    a class); any other name is an error listing both lists."""
    model, data = tuple(str(x) for x in model_labels), tuple(str(x) for x in data_labels)
    unknown = [d for d in data if d not in model]
    if unknown:
        raise DataError(f"the data's labels {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not "
                        f"among the model's ({', '.join(model[:12])}{' ...' if len(model) > 12 else ''}); labels are "
                        "matched by name: rename the class folders or give label_names in the .npz")
    return LabelMap(model, data, tuple(model.index(d) for d in data))


@dataclass(frozen=True)
class InputSet:
    """Samples for a model, with labels (model indices, after :func:`map_labels`) where the data had them."""

    samples: tuple[dict[str, np.ndarray], ...]
    origin: str
    labels: np.ndarray | None = None
    label_map: LabelMap | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> dict[str, Any]:
        return {"origin": self.origin, "samples": len(self), "labeled": self.labels is not None,
                "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in (self.samples[0].items() if self else ())},
                "label_map": self.label_map.to_dict() if self.label_map else None}


def _refuse_nonfinite(name: str, value: np.ndarray, origin: str) -> None:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise DataError(f"{origin}: array {name!r} holds NaN or inf values; clean the data first")


def _cast(t: InputTensor, value: np.ndarray, origin: str) -> np.ndarray:
    if t.dtype is None or t.dtype == "bfloat16" or value.dtype == np.dtype(t.dtype):
        return value
    if not np.can_cast(value.dtype, np.dtype(t.dtype), casting="same_kind"):
        raise DataError(f"{origin}: array {t.name!r} is {value.dtype} but the model takes {t.dtype}; convert it "
                        "(a float array is not cast to integers silently)")
    return value.astype(t.dtype)


# --------------------------------------------------------------------------- .npz
def _npz_samples(path: Path, contract: ModelContract) -> tuple[list[dict[str, np.ndarray]], Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise InputFileError(f"{path}: not a readable .npz file ({e})") from None
    check_names(arrays, (*contract.input_names, *_LABEL_KEYS), "array", hint=f"in {path.name}: arrays are named "
                "after the model's inputs, plus optional labels / label_names")
    missing = [n for n in contract.input_names if n not in arrays]
    if missing:
        raise DataError(f"{path}: no array for input(s) {', '.join(missing)}; the model takes "
                        f"{', '.join(contract.input_names)} and the file has {', '.join(arrays)}")
    counts = {k: len(v) for k, v in arrays.items() if k != "label_names" and v.ndim}
    if len(set(counts.values())) > 1:
        raise DataError(f"{path}: the first axis indexes samples, but the arrays disagree: {counts}")
    n = next(iter(counts.values()), 0)
    per_input = {}
    for t in contract.inputs:
        a = arrays[t.name]
        _refuse_nonfinite(t.name, a, str(path))
        if t.rank is None:
            raise ConfigError(f"input {t.name!r} has no known shape, so the axes of {path.name}[{t.name!r}] cannot "
                              f"be read; give --input {t.name}:SHAPE")
        if a.ndim == t.rank + 1:
            per_input[t.name] = [a[i] for i in range(n)]
        elif a.ndim == t.rank and t.rank > 0:
            per_input[t.name] = [a[i : i + 1] for i in range(n)]
        else:
            raise DataError(f"{path}: array {t.name!r} has shape {a.shape}; for input {t.name!r} "
                            f"({format_shape(t.shape)}) it must be SAMPLES x {format_shape(t.shape)} or, with a "
                            "batch axis first, SAMPLES x the rest")
    samples = [{t.name: _cast(t, np.array(per_input[t.name][i]), str(path)) for t in contract.inputs}
               for i in range(n)]
    for t in contract.inputs:
        if samples:
            check_sample(t, samples[0][t.name], origin=f"{path}[{t.name!r}]")
    labels = arrays.get("labels")
    names = tuple(str(x) for x in arrays["label_names"]) if "label_names" in arrays else None
    return samples, labels, names


# --------------------------------------------------------------------------- image folder
def _image_input(contract: ModelContract) -> InputTensor:
    images = [t for t in contract.inputs if t.rank == 4]
    if len(contract.inputs) != 1 or not images:
        raise DataError(f"an image folder feeds a model with one image input (N x C x H x W); this model takes "
                        f"{', '.join(f'{t.name} {format_shape(t.shape)}' for t in contract.inputs)}: use an .npz "
                        "with one array per input, or --data module:function")
    return images[0]


def _image_files(path: Path) -> tuple[list[tuple[str | None, Path]], bool]:
    flat = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
    dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    nested = [(d.name, f) for d in dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if flat and nested:
        raise DataError(f"{path}: holds images both at its top level and in class folders; put all images in class "
                        "folders (labeled) or all at the top level (unlabeled)")
    if not flat and not nested:
        raise DataError(f"{path}: no images found (looked for {', '.join(sorted(_IMAGE_SUFFIXES))})")
    return ([(None, f) for f in flat], False) if flat else (nested, True)


def _folder_samples(path: Path, contract: ModelContract) -> tuple[list[dict[str, np.ndarray]], Any, Any]:
    from PIL import Image, UnidentifiedImageError

    t = _image_input(contract)
    layout = (t.layout or "NCHW").replace(",", "").upper()
    c_axis, h_axis, w_axis = layout.index("C"), layout.index("H"), layout.index("W")
    shape = t.concrete_shape() or t.shape
    c, h, w = shape[c_axis], shape[h_axis], shape[w_axis]  # type: ignore[index]
    if not isinstance(c, int) or c not in (1, 3):
        raise ConfigError(f"input {t.name!r} is {format_shape(t.shape)}: an image folder needs 1 or 3 channels known; "
                          f"give --input {t.name}:1x3xHxW")
    files, labeled = _image_files(path)
    samples = []
    for _, f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if isinstance(h, int) and isinstance(w, int):
                    im = im.resize((w, h), Image.BILINEAR)
                elif samples and im.size != (samples[0].shape[w_axis], samples[0].shape[h_axis]):
                    raise ConfigError(f"input {t.name!r} is {format_shape(t.shape)} and the images differ in size; "
                                      f"give the size to resize to with --opt-shape {t.name}:1x{c}xHxW")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: unreadable image ({e}); remove or replace it") from None
        hwc = arr[:, :, None] if arr.ndim == 2 else arr
        samples.append(_preprocess(t, np.transpose(hwc, tuple("HWC".index(a) for a in layout[1:]))[None]))
    names = tuple(sorted({n for n, _ in files if n is not None})) if labeled else None
    labels = np.array([names.index(n) for n, _ in files], dtype=np.int64) if names else None
    return [{t.name: s} for s in samples], labels, names


def _preprocess(t: InputTensor, raw: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the model's dtype: [0, 1], then its value range, then (x - mean) / std per channel."""
    if t.dtype == "uint8":
        return raw.astype(np.uint8)
    return preprocess(t, raw.astype(np.float32) / 255.0).astype(t.dtype or "float32")


# --------------------------------------------------------------------------- module:function
def _function_samples(spec: str, contract: ModelContract) -> tuple[list[dict[str, np.ndarray]], Any, Any]:
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--data {spec}: cannot load {attr!r} from {module!r} ({e})") from None
    samples, labels = [], []
    for i, item in enumerate(fn()):
        if not isinstance(item, Mapping):
            raise DataError(f"--data {spec}: item {i} is a {type(item).__name__}; yield dicts of inputs by name")
        check_names(item, (*contract.input_names, "label"), "input", hint=f"(item {i} of --data {spec})")
        missing = [n for n in contract.input_names if n not in item]
        if missing:
            raise DataError(f"--data {spec}: item {i} lacks input(s) {', '.join(missing)}")
        sample = {}
        for t in contract.inputs:
            v = np.asarray(item[t.name].numpy() if hasattr(item[t.name], "numpy") else item[t.name])
            _refuse_nonfinite(t.name, v, f"--data {spec}")
            check_sample(t, v, origin=f"--data {spec} item {i}")
            sample[t.name] = _cast(t, v, f"--data {spec}")
        samples.append(sample)
        labels.append(item.get("label"))
    if any(lab is not None for lab in labels):
        if any(lab is None for lab in labels):
            raise DataError(f"--data {spec}: some items have a label and some do not")
        names = tuple(sorted({str(lab) for lab in labels}))
        return samples, np.array([names.index(str(lab)) for lab in labels]), names
    return samples, None, None


def _is_function_spec(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


def load_inputs(source: str | Path, *, contract: ModelContract, model_labels: Sequence[str] | None = None,
                limit: int | None = None) -> InputSet:
    """Real inputs for ``contract`` from an image folder, an ``.npz`` or ``module:function`` (see module doc)."""
    text = str(source)
    path = Path(source)
    if not path.exists() and _is_function_spec(text):
        samples, labels, names = _function_samples(text, contract)
    elif path.is_dir():
        samples, labels, names = _folder_samples(path, contract)
    elif path.suffix.lower() == ".npz" and path.exists():
        samples, labels, names = _npz_samples(path, contract)
    elif not path.exists():
        raise InputFileError(f"--data {text}: not found; give an image folder, an .npz named after the inputs, or "
                             "module:function")
    else:
        raise InputFileError(f"--data {text}: unsupported file; give an image folder, an .npz or module:function")
    if not samples:
        raise DataError(f"--data {text}: no samples")
    label_map = None
    if labels is not None:
        labels = np.asarray(labels)
        if names is None:  # integer labels without names: their names are the numbers, matched like any other
            if labels.dtype.kind not in "iu":
                names = tuple(sorted({str(x) for x in labels.tolist()}))
                labels = np.array([names.index(str(x)) for x in labels.tolist()], dtype=np.int64)
            else:
                names = tuple(str(i) for i in range(int(labels.max()) + 1))
        if model_labels is not None:
            label_map = map_labels(model_labels, names)
            labels = label_map.apply(labels)
    n = len(samples) if limit is None else min(limit, len(samples))
    return InputSet(samples=tuple(samples[:n]), origin=text, labels=None if labels is None else labels[:n],
                    label_map=label_map)


def batches(samples: Iterable[Mapping[str, np.ndarray]], contract: ModelContract, *, batch_size: int = 1
            ) -> Iterator[dict[str, np.ndarray]]:
    """Samples joined into batches along each input's ``N`` axis (its layout's, else 0); a 0-d input (a sample
    rate) must be equal across a batch."""
    chunk: list[Mapping[str, np.ndarray]] = []
    for s in [*samples, None]:
        if s is not None:
            chunk.append(s)
        if chunk and (len(chunk) == batch_size or s is None):
            out = {}
            for t in contract.inputs:
                vals = [np.asarray(c[t.name]) for c in chunk]
                if vals[0].ndim == 0:
                    if any(not np.array_equal(v, vals[0]) for v in vals):
                        raise DataError(f"input {t.name!r} is a scalar that differs between samples; it cannot be "
                                        "batched: use batch size 1")
                    out[t.name] = vals[0]
                    continue
                axis = (t.layout or "").replace(",", "").upper().find("N")
                out[t.name] = np.concatenate(vals, axis=max(axis, 0))
            yield out
            chunk = []
