"""The calibration set: real images from the training split, stratified across classes, recorded for replay.

Too few or one-sided calibration images are the commonest cause of int8 accuracy collapse, so the selection is
balanced (each class gets an equal share where it has enough images; the rest is spread over those that do),
seeded, and interleaved by class so that any prefix (NNCF's ``subset_size``, the sensitivity subset) is
balanced too. The record (split, seed, indices, count per class) goes into the artifact history.

Example::

    calib = select_calibration(load_data("mnist5k"), samples=300, seed=0)
    calib.record()["per_class"]            # {'0': 30, '1': 30, ...}
    batch = calib.batch(artifact.input_spec)   # float32 N x C x H x W, prepared like training
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.artifact import InputSpec
    from edgetl.data import DataSplits

__all__ = ["CalibrationSet", "select_calibration"]

log = logging.getLogger(__name__)

LOW_COUNT = 100  # below this, int8 ranges are routinely unrepresentative (ultralytics #20909, #11848)


@dataclass
class CalibrationSet:
    """The chosen calibration images (uint8, N x C x H x W) with where they came from."""

    images: Any  # torch uint8 tensor
    labels: np.ndarray
    indices: np.ndarray  # positions in the split
    split: str
    dataset: str
    seed: int
    requested: int
    classes: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.indices))

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {self.classes[i]: int(c) for i, c in enumerate(counts)}

    def batch(self, spec: InputSpec, *, limit: int | None = None) -> np.ndarray:
        """The images prepared to ``spec`` (resize, channels, normalisation) as one float32 array."""
        from edgetl.data import prepare

        images = self.images if limit is None else self.images[:limit]
        return np.ascontiguousarray(prepare(images, spec).numpy(), dtype=np.float32)

    def record(self) -> dict[str, Any]:
        """JSON-safe description for the artifact history: enough to rebuild the exact set."""
        return {"dataset": self.dataset, "split": self.split, "seed": self.seed, "count": len(self),
                "requested": self.requested, "per_class": self.per_class(),
                "indices": [int(i) for i in self.indices]}


def _shares(available: np.ndarray, total: int) -> np.ndarray:
    """Per-class counts summing to ``total`` (<= available.sum()): equal shares, capped, the rest redistributed."""
    take = np.zeros_like(available)
    left = total
    open_ = available > 0
    while left > 0 and open_.any():
        k = int(open_.sum())
        each = max(left // k, 1)
        for c in np.flatnonzero(open_):
            give = min(each, int(available[c] - take[c]), left)
            take[c] += give
            left -= give
            if take[c] >= available[c]:
                open_[c] = False
            if left == 0:
                break
    return take


def select_calibration(data: DataSplits, *, samples: int = 300, seed: int = 0, split: str = "train") -> CalibrationSet:
    """Choose ``samples`` images of ``split``, stratified across classes and seeded.

    Fewer images than asked: a warning, and all of them are used. Fewer than 100: a warning that int8 ranges may
    not represent the data. None: :class:`~edgetl.errors.DataError`.
    """
    subset = data.split(split)
    labels = np.asarray(subset.labels, dtype=np.int64)
    n_avail = len(labels)
    if n_avail == 0:
        raise DataError(f"no calibration data: the {split} split of {data.name!r} is empty; int8 calibration needs "
                        "real images of the task (give a dataset with training images via --data)")
    warnings: list[str] = []
    count = min(int(samples), n_avail)
    if count < samples:
        msg = (f"asked for {samples} calibration images but the {split} split of {data.name!r} has only {n_avail}; "
               f"using all {n_avail}")
        log.warning(msg)
        warnings.append(msg)
    if count < LOW_COUNT:
        msg = (f"only {count} calibration images (fewer than {LOW_COUNT}): int8 activation ranges may not "
               "represent real inputs; check the accuracy report, or give more data")
        log.warning(msg)
        warnings.append(msg)
    n_classes = max(len(data.classes), int(labels.max()) + 1)
    available = np.bincount(labels, minlength=n_classes)
    shares = _shares(available, count)
    rng = np.random.default_rng(seed)
    per_class = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        per_class.append(rng.permutation(idx)[: shares[c]])
    # Interleave by class so that every prefix is balanced as well.
    order = []
    for i in range(int(shares.max()) if len(shares) else 0):
        order.extend(int(p[i]) for p in per_class if i < len(p))
    indices = np.asarray(order, dtype=np.int64)
    return CalibrationSet(images=subset.images[indices], labels=labels[indices], indices=indices, split=split,
                          dataset=data.name, seed=seed, requested=int(samples), classes=tuple(data.classes),
                          warnings=warnings)
