"""Data for any model: image folders with and without classes, .npz named after the inputs, module:function,
and labels matched by name (remapped when only the order differs, refused when the names differ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgetl.contract import InputTensor, ModelContract, merge, parse_flags
from edgetl.contract_read import read_module
from edgetl.data import load_inputs  # re-exported beside load_data
from edgetl.errors import ConfigError, DataError, UnknownNameError
from edgetl.inputs import batches, map_labels
from tests import shapes


@pytest.fixture(scope="session")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


IMAGE = ModelContract(inputs=(InputTensor("image", ("N", 1, 28, 28), "float32"),))


def _write_pngs(root, images, labels=None):
    for i, img in enumerate(images):
        folder = root / shapes.WORDS[labels[i]] if labels is not None else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")


def vad_samples():
    """``--data tests.test_inputs:vad_samples``: three inputs per sample, one labelled by name."""
    rng = np.random.default_rng(0)
    for i in range(6):
        yield {"audio": rng.standard_normal((1, 256)).astype(np.float32), "state": np.zeros((2, 1, 32), np.float32),
               "sr": np.array(16000), "label": ("speech", "silence")[i % 2]}


def not_dicts():
    return [np.zeros(3)]


def _vad_contract(shape_cache):
    vad = shapes.trained("VadLike", shape_cache)
    c = read_module(vad, (torch.zeros(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000)))
    return vad, merge(c, parse_flags(inputs=["audio:Nx256", "state:2xNx32", "sr:scalar:int64"]))


def test_unlabeled_flat_folder_feeds_the_model_its_pixels(tmp_path):
    x, _ = shapes.mnist(None)
    _write_pngs(tmp_path, x[:12])
    data = load_inputs(tmp_path, contract=IMAGE)
    assert len(data) == 12 and data.labels is None
    s = data.samples[0]["image"]
    assert s.shape == (1, 1, 28, 28) and s.dtype == np.float32
    assert np.abs(s - x[:1]).max() <= 0.5 / 255 + 1e-6  # the PNG's 8-bit rounding, nothing else
    scaled = load_inputs(tmp_path, contract=ModelContract(inputs=(InputTensor(
        "image", (1, 1, 32, 32), "float32", value_range=(-1, 1), mean=(0.5,), std=(2.0,)),)))
    t = scaled.samples[0]["image"]
    assert t.shape == (1, 1, 32, 32) and t.min() >= (-1 - 0.5) / 2 - 1e-6 and t.max() <= (1 - 0.5) / 2 + 1e-6


def test_class_folders_are_matched_to_the_models_labels_by_name(tmp_path, shape_cache):
    model = shapes.trained("PooledClassifier", shape_cache)
    x, y = shapes.mnist(None)
    x, y = x[4000:4300], y[4000:4300]
    _write_pngs(tmp_path, x, y)
    data = load_inputs(tmp_path, contract=IMAGE, model_labels=model.LABELS)
    # folders sort alphabetically (eight, five, four, ...): the same names in another order are remapped
    assert data.label_map.remapped and data.label_map.to_dict()["mapping"]["eight"] == "eight"
    assert data.label_map.data_labels[0] == "eight" and data.label_map.index[0] == 8
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(s["image"])).argmax(1).numpy() for s in data.samples])
    files = sorted(tmp_path.rglob("*.png"))  # same order as the loader: class folder, then file
    truth = np.array([y[int(f.stem)] for f in files])
    assert (data.labels == truth).all()
    assert (pred == data.labels).mean() == pytest.approx((pred == truth).mean())
    assert (pred == truth).mean() > 0.8
    with pytest.raises(DataError, match="matched by name"):
        load_inputs(tmp_path, contract=IMAGE, model_labels=[str(i) for i in range(10)])


def test_integer_labels_are_names_too(tmp_path, shape_cache):
    x, y = shapes.mnist(None)
    np.savez(tmp_path / "d.npz", image=x[:20], labels=y[:20])
    numeric = load_inputs(tmp_path / "d.npz", contract=IMAGE, model_labels=[str(i) for i in range(10)])
    assert not numeric.label_map.remapped and (numeric.labels == y[:20]).all()
    # a word-labelled model against labels 0..9: the index match that scored 7.5 % is refused
    with pytest.raises(DataError, match="labels 0, 1, 2"):
        load_inputs(tmp_path / "d.npz", contract=IMAGE, model_labels=shapes.WORDS)
    np.savez(tmp_path / "w.npz", image=x[:20], labels=y[:20], label_names=np.array(shapes.WORDS))
    named = load_inputs(tmp_path / "w.npz", contract=IMAGE, model_labels=shapes.WORDS)
    assert (named.labels == y[:20]).all()
    assert map_labels(["a", "b", "c"], ["c", "a"]).index == (2, 0)


def test_folder_refusals(tmp_path):
    x, y = shapes.mnist(None)
    _write_pngs(tmp_path / "mixed", x[:4], y[:4])
    _write_pngs(tmp_path / "mixed", x[4:6])
    with pytest.raises(DataError, match="both at its top level and in class folders"):
        load_inputs(tmp_path / "mixed", contract=IMAGE)
    two = ModelContract(inputs=(IMAGE.inputs[0], InputTensor("k", (1,), "int64")))
    with pytest.raises(DataError, match="one image input"):
        load_inputs(tmp_path / "mixed" / "zero", contract=two)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "mixed" / "zero" / "odd.png")
    dyn = ModelContract(inputs=(InputTensor("image", ("N", 1, "H", "W"), "float32"),))
    with pytest.raises(ConfigError, match="--opt-shape image:1x1xHxW"):
        load_inputs(tmp_path / "mixed" / "zero", contract=dyn)
    assert load_inputs(tmp_path / "mixed" / "zero", contract=merge(dyn, parse_flags(
        opt_shapes=["image:1x1x40x40"]))).samples[0]["image"].shape == (1, 1, 40, 40)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        load_inputs(tmp_path / "mixed" / "zero",
                    contract=ModelContract(inputs=(InputTensor("image", ("N", "C", 8, 8), "float32"),)))


def test_npz_with_several_inputs_runs_the_state_model(tmp_path, shape_cache):
    vad, c = _vad_contract(shape_cache)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((5, 256)).astype(np.float32)  # rank 2 = the input's: a batch axis of 1 each
    state = rng.standard_normal((5, 2, 1, 32)).astype(np.float32)  # rank 4 = 1 + the input's: state[i]
    np.savez(tmp_path / "v.npz", audio=audio, state=state, sr=np.full(5, 8000))
    data = load_inputs(tmp_path / "v.npz", contract=c)
    s = data.samples[3]
    assert s["audio"].shape == (1, 256) and s["state"].shape == (2, 1, 32) and s["sr"].shape == ()
    assert np.array_equal(s["state"], state[3]) and int(s["sr"]) == 8000
    prob, new_state = vad(*(torch.from_numpy(s[n]) for n in ("audio", "state", "sr")))
    assert prob.shape == (1, 1) and new_state.shape == (2, 1, 32)
    joined = list(batches(data.samples, merge(c, parse_flags()), batch_size=2))
    assert len(joined) == 3 and joined[0]["audio"].shape == (2, 256)
    layered = ModelContract(inputs=tuple(InputTensor(t.name, t.shape, t.dtype, layout="L,N,H") if t.name == "state"
                                         else t for t in c.inputs))
    assert next(batches(data.samples, layered, batch_size=2))["state"].shape == (2, 2, 32)


def test_npz_refusals(tmp_path, shape_cache):
    _, c = _vad_contract(shape_cache)
    ok = dict(audio=np.zeros((3, 256), np.float32), state=np.zeros((3, 2, 1, 32), np.float32), sr=np.full(3, 16000))
    cases = [
        (dict(audio=ok["audio"], state=ok["state"]), DataError, r"no array for input\(s\) sr"),
        ({**ok, "stat": ok["state"]}, UnknownNameError, "did you mean 'state'"),
        ({**ok, "sr": np.full(4, 16000)}, DataError, "disagree"),
        ({**ok, "sr": np.full(3, 16000.0)}, DataError, "float64 but the model takes int64"),
        ({**ok, "state": np.zeros((3, 2, 1, 16), np.float32)}, DataError, "dim 2 must be 32"),
        ({**ok, "audio": np.full((3, 256), np.nan, np.float32)}, DataError, "NaN"),
    ]
    for i, (arrays, err, msg) in enumerate(cases):
        np.savez(tmp_path / f"{i}.npz", **arrays)
        with pytest.raises(err, match=msg):
            load_inputs(tmp_path / f"{i}.npz", contract=c)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="not a readable .npz"):
        load_inputs(tmp_path / "bad.npz", contract=c)


def test_module_function_data(shape_cache):
    vad, c = _vad_contract(shape_cache)
    data = load_inputs("tests.test_inputs:vad_samples", contract=c, model_labels=["silence", "speech"])
    assert len(data) == 6 and data.labels.tolist() == [1, 0, 1, 0, 1, 0]
    with torch.no_grad():
        prob, _ = vad(*(torch.from_numpy(data.samples[0][n]) for n in ("audio", "state", "sr")))
    assert 0 <= float(prob) <= 1
    with pytest.raises(ConfigError, match="cannot load 'nope'"):
        load_inputs("tests.test_inputs:nope", contract=c)
    with pytest.raises(DataError, match="yield dicts"):
        load_inputs("tests.test_inputs:not_dicts", contract=c)
    with pytest.raises(Exception, match="not found"):
        load_inputs("missing_dir/data.npz", contract=c)
