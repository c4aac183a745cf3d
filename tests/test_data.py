"""Data loading: built-in real datasets, image folders, .npz, splits, preprocessing and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetl.artifact import InputSpec
from edgetl.data import load_data, prepare
from edgetl.errors import ConfigError, DataError, InputFileError, UnknownNameError


def test_mnist5k_is_real_and_split_deterministically():
    a = load_data("mnist5k", seed=0)
    b = load_data("mnist5k", seed=0)
    c = load_data("mnist5k", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 750, 750)
    assert a.num_classes == 10 and a.source_channels == 1 and a.native_resolution == (28, 28)
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)
    # stratified: every class in every split, in near-equal numbers (500 per class in the source)
    counts = torch.bincount(a.test.labels, minlength=10)
    assert counts.min() == counts.max() == 75
    # in a shuffled order (the source is sorted by class): any prefix, e.g. an evaluation limit, is a fair sample
    head = torch.bincount(a.test.labels[:100], minlength=10)
    assert head.min() >= 3 and head.max() <= 20
    # real digits: mostly dark background with bright strokes
    assert a.train.images.float().mean() < 60 and a.train.images.max() == 255


def test_digits_builtin():
    d = load_data("digits")
    assert d.num_classes == 10 and d.native_resolution == (8, 8)
    assert len(d.train) + len(d.val) + len(d.test) == 1797


def test_unknown_dataset_suggests_nearest():
    with pytest.raises(UnknownNameError, match="did you mean 'mnist5k'"):
        load_data("mnist5")


def test_image_folder(tmp_path):
    from PIL import Image

    d = load_data("digits")
    for i in range(40):
        label = int(d.train.labels[i])
        (tmp_path / f"c{label}").mkdir(exist_ok=True)
        Image.fromarray(d.train.images[i, 0].numpy()).save(tmp_path / f"c{label}" / f"{i}.png")
    s = load_data(tmp_path, seed=0)
    assert s.classes == tuple(sorted(p.name for p in tmp_path.iterdir()))
    assert s.source_channels == 1 and s.native_resolution == (8, 8)
    assert len(s.train) + len(s.val) + len(s.test) == 40


def test_image_folder_without_images_or_with_one_class(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_data(tmp_path / "empty")
    from PIL import Image

    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(one / f"{i}.png")
    with pytest.raises(DataError, match="one class"):
        load_data(tmp_path / "one")


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((30, 12, 12, 3)).astype(np.float32)  # NHWC floats in [0, 1]
    y = np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data(tmp_path / "d.npz")
    assert s.source_channels == 3 and s.native_resolution == (12, 12) and s.num_classes == 3
    assert s.train.images.dtype == torch.uint8
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_data(tmp_path / "bad.npz")
    np.savez(tmp_path / "mismatch.npz", x=x, y=y[:5])
    with pytest.raises(DataError, match="30 images but 'y' has 5"):
        load_data(tmp_path / "mismatch.npz")


def test_bad_files_and_fractions(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(InputFileError, match="unsupported data file"):
        load_data(tmp_path / "d.csv")
    with pytest.raises(InputFileError, match="not found"):
        load_data("no/such/dir")
    with pytest.raises(ConfigError, match="fractions"):
        load_data("digits", fractions=(0.5, 0.5, 0.5))


def test_prepare_converts_channels_resizes_and_normalises():
    imgs = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    spec = InputSpec(shape=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = prepare(imgs, spec)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 2.0), atol=1e-5)  # (1 - 0.5) / 0.25
