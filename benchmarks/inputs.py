"""Real benchmark inputs: images of the dataset the model was trained on, else real photos, never noise.

Where they come from, in order: the dataset the artifact records (its history or sidecar), real photos from
``skimage.data`` (centre-cropped to the model's aspect ratio), else the scans of sklearn's handwritten digits.

Example::

    batches, origin = real_inputs(art, batch=1)   # origin e.g. "data:mnist5k/test[0:8]"
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from edgetl.artifact import Artifact, InputSpec
from edgetl.choice import Choice
from edgetl.errors import ConfigError

__all__ = ["InputSource", "real_inputs"]

log = logging.getLogger(__name__)

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera",
           "coins", "moon", "grass", "brick", "gravel", "text", "page", "colorwheel")


class InputSource(Choice):
    """Where benchmark inputs come from: the artifact's dataset if recorded (``auto``), or forced."""

    AUTO = "auto"
    DATA = "data"
    PHOTOS = "photos"

    @classmethod
    def _kind(cls) -> str:
        return "input source"


def _recorded_dataset(artifact: Artifact) -> str | None:
    name = artifact.extra.get("data")
    for rec in reversed(artifact.history):
        name = name or rec.options.get("data")
    return str(name) if name else None


def _centre_crop(img: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """Crop to the model's aspect ratio so the resize does not squash the photo."""
    h, w = img.shape[:2]
    th, tw = resolution
    if h * tw > w * th:
        ch = max(1, round(w * th / tw))
        return img[(h - ch) // 2 : (h - ch) // 2 + ch]
    cw = max(1, round(h * tw / th))
    return img[:, (w - cw) // 2 : (w - cw) // 2 + cw]


@functools.lru_cache(maxsize=4)
def _photo_inputs(spec: InputSpec, n: int) -> tuple[np.ndarray, str] | None:
    try:
        import skimage.data as sd
    except ImportError:
        return None
    import torch

    from edgetl.data import prepare

    out, used = [], []
    for name in _PHOTOS:
        if len(out) == n:
            break
        try:
            img = np.asarray(getattr(sd, name)())
        except Exception:  # noqa: BLE001 - a photo missing from this skimage build: take the next
            continue
        if img.dtype != np.uint8:
            continue
        img = _centre_crop(img[..., :3] if img.ndim == 3 else img[..., None], spec.resolution)
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        out.append(prepare(t, spec).numpy())
        used.append(name)
    if not out:
        return None
    return np.concatenate(out), f"photos:skimage.data({','.join(used)})"


@functools.lru_cache(maxsize=4)
def _dataset_inputs(name: str, spec: InputSpec, n: int) -> tuple[np.ndarray, str] | None:
    """Cached: benching several exports of one model loads their dataset once."""
    from edgetl.data import BUILTIN_DATASETS, load_data, prepare

    if name not in BUILTIN_DATASETS and not Path(name).exists():
        return None
    try:
        splits = load_data(name, seed=0)
    except Exception as e:  # noqa: BLE001 - fall back to photos, but say why
        log.warning("cannot load the artifact's dataset %r for benchmark inputs (%s); using photos", name, e)
        return None
    test = splits.test if len(splits.test) else splits.train
    k = min(n, len(test))
    return prepare(test.images[:k], spec).numpy(), f"data:{splits.name}/test[0:{k}]"


def real_inputs(artifact: Artifact, *, batch: int = 1, count: int = 8,
                source: InputSource | str = InputSource.AUTO) -> tuple[list[np.ndarray], str]:
    """``count`` float32 batches of real images prepared to ``artifact.input_spec``, and where they came from.

    Example::

        batches, origin = real_inputs(art, batch=1)   # origin e.g. "data:mnist5k/test[0:8]"
    """
    source = InputSource.parse(source)
    spec, want = artifact.input_spec, batch * count
    got = None
    data = _recorded_dataset(artifact)
    if source is not InputSource.PHOTOS and data:
        got = _dataset_inputs(data, spec, want)
    if got is None and source is InputSource.DATA:
        raise ConfigError(f"{artifact.name} records no loadable dataset ({data or 'none recorded'}); use photo inputs")
    if got is None:
        got = _photo_inputs(spec, want)
    if got is None:  # no scikit-image: the scans of handwritten digits that ship with scikit-learn
        got = _dataset_inputs("digits", spec, want)
    if got is None:
        raise ConfigError("no real images available for benchmark inputs; install scikit-image")
    images, origin = got
    reps = -(-want // len(images))
    images = np.concatenate([images] * reps)[:want].astype(np.float32)
    return [np.ascontiguousarray(images[i * batch : (i + 1) * batch]) for i in range(count)], origin
