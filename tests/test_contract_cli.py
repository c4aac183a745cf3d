"""Any model, any task, through the command line: ``edgetl eval`` of ONNX files that carry no edgetl sidecar,
with several inputs (one a recurrent state, one a scalar sample rate), several outputs (a three-head detector)
and dynamic H x W (a segmenter run at two resolutions), scored label-free against a reference model; labels
matched by name; contracts that contradict the file refused in one line before any work.

The models are the small real ones of :mod:`tests.shapes`, trained briefly (cached), exported here with
``torch.onnx.export`` directly (the files a third party would hand over), with OpenVINO IR of the same graph
(``ov.convert_model``) as the reference where a second runtime is the point.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (part of the test install: missing is a failure, not a skip)
import openvino  # noqa: F401  (part of the test install: missing is a failure, not a skip)
import pytest
import torch

from tests import shapes
from tests.cli_checks import ok_json as _ok
from tests.cli_checks import onnx_of as _onnx
from tests.cli_checks import refused as _refused
from tests.conftest import run_cli_here


@pytest.fixture(scope="session")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


def _ir(onnx_path, path):
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(path))
    return path


def _perturbed(model, scale=0.02, seed=0):
    """A copy with noise on every weight: a stand-in for a compressed model that is close but not equal."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return m


# --------------------------------------------------------------------------- two inputs with state, a scalar
@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    model = shapes.VadLike().eval()
    example = (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000))
    names = ["audio", "state", "sr"]
    src = _onnx(model, example, d / "vad.onnx", inputs=names, outputs=["prob", "new_state"],
                dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})
    near = _onnx(_perturbed(model), example, d / "vad_near.onnx", inputs=names, outputs=["prob", "new_state"])
    rng = np.random.default_rng(1)
    n = 24
    audio = rng.standard_normal((n, 1, 256)).astype(np.float32)
    state = rng.uniform(-1, 1, (n, 2, 1, 32)).astype(np.float32)  # state[i] is sample i's whole state
    np.savez(d / "vad.npz", audio=audio, state=state, sr=np.full((n,), 16000, np.int64))
    return {"src": src, "near": near, "ir": _ir(src, d / "vad.xml"), "data": d / "vad.npz", "model": model,
            "arrays": (audio, state)}


def test_eval_two_inputs_with_state_against_reference(vad):
    out = _ok(run_cli_here("eval", str(vad["near"]), "--data", str(vad["data"]), "--reference", str(vad["src"]), "--json"))
    assert out["samples"] == 24 and out["task"] == "generic"
    assert set(out["contract"]["inputs"]) == {"audio", "state", "sr"}
    per = {o["output"]: o for o in out["fidelity"]["outputs"]}
    assert set(per) == {"prob", "new_state"}  # every output, not just the first
    for o in per.values():
        assert 0.9 < o["cosine"] < 1.0 and o["max_abs"] > 0  # close, not equal: the weights were perturbed
    assert out["headline"]["metric"] == "snr_db"
    assert out["headline"]["value"] == min(o["snr_db"] for o in per.values())
    assert out["output_shapes"] == {"prob": [1, 1], "new_state": [2, 1, 32]}


def test_eval_same_graph_in_two_runtimes_is_faithful(vad):
    """ONNX Runtime against OpenVINO on the same graph: near-identical on every output."""
    out = _ok(run_cli_here("eval", str(vad["src"]), "--data", str(vad["data"]), "--reference", str(vad["ir"]),
                      "--output", "prob", "--json"))
    assert [o["output"] for o in out["fidelity"]["outputs"]] == ["prob"]  # --output selects
    assert out["fidelity"]["outputs"][0]["cosine"] > 0.99999 and out["fidelity"]["outputs"][0]["snr_db"] > 60
    # and the numbers are the model's: check one sample against PyTorch directly
    audio, state = vad["arrays"]
    with torch.no_grad():
        prob = vad["model"](torch.from_numpy(audio[0]), torch.from_numpy(state[0]), torch.tensor(16000))[0]
    from edgetl.models import load_model
    from edgetl.runtimes import open_runtime

    with open_runtime(load_model(vad["src"])) as rt:
        got = rt.run_named({"audio": audio[0], "state": state[0], "sr": np.array(16000, np.int64)})
    assert set(got) == {"prob", "new_state"}
    np.testing.assert_allclose(got["prob"], prob.numpy(), atol=1e-5)


def test_eval_without_reference_or_labels_names_the_flag(vad):
    _refused(run_cli_here("eval", str(vad["src"]), "--data", str(vad["data"])), "--reference SOURCE")


def test_contract_contradicting_the_file_is_refused_before_work(vad, tmp_path):
    missing_data = str(tmp_path / "nothing.npz")  # never read: the contract is refused first
    _refused(run_cli_here("eval", str(vad["src"]), "--input", "state:2x1", "--data", missing_data), "rank 2", "state")
    _refused(run_cli_here("eval", str(vad["src"]), "--input", "stat:2xNx32", "--data", missing_data), "stat", "state")
    _refused(run_cli_here("eval", str(vad["src"]), "--input", "audio:Nx128", "--data", missing_data), "fixes it at 256")
    _refused(run_cli_here("eval", str(vad["src"]), "--input", "1x256", "--data", missing_data), "3 inputs")
    _refused(run_cli_here("eval", str(vad["src"]), "--output", "logits", "--data", missing_data), "logits")


def test_data_that_contradicts_the_contract_is_one_line(vad, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, audio=np.zeros((3, 1, 128), np.float32), state=np.zeros((3, 2, 1, 32), np.float32),
             sr=np.full((3,), 16000, np.int64))
    _refused(run_cli_here("eval", str(vad["src"]), "--data", str(bad), "--reference", str(vad["ir"])), "audio", "256",
             code=2)  # the user's data: exit 2 (the README's rule; DataError is user input)


# --------------------------------------------------------------------------- three heads
@pytest.fixture(scope="module")
def facedet(tmp_path_factory, shape_cache):
    d = tmp_path_factory.mktemp("det")
    model = shapes.trained("FaceDetLike", shape_cache)
    example = (torch.zeros(1, 3, 32, 32),)
    names = ["boxes", "scores", "landmarks"]
    src = _onnx(model, example, d / "det.onnx", inputs=["image"], outputs=names)
    near = _onnx(_perturbed(model, 0.05), example, d / "det_near.onnx", inputs=["image"], outputs=names)
    images, _ = shapes.det_data(40, seed=7)
    np.savez(d / "det.npz", image=images)
    return {"src": src, "near": near, "data": d / "det.npz", "model": model}


def test_eval_three_head_detector(facedet):
    args = ["--task", "detection", "--role", "boxes:boxes:N,A,4:xyxy", "--data", str(facedet["data"]), "--json"]
    same = _ok(run_cli_here("eval", str(facedet["src"]), "--reference", str(facedet["src"]), *args))
    assert same["headline"]["metric"] == "box_f1" and same["headline"]["value"] == 1.0
    assert {o["output"] for o in same["fidelity"]["outputs"]} == {"boxes", "scores", "landmarks"}
    near = _ok(run_cli_here("eval", str(facedet["near"]), "--reference", str(facedet["src"]), *args))
    assert near["fidelity"]["detection"][0]["reference_boxes"] > 0  # the trained heads do find the digits
    assert 0.5 < near["headline"]["value"] <= 1.0
    assert all(o["cosine"] < 1.0 for o in near["fidelity"]["outputs"])


def test_detection_without_box_roles_names_the_flag(facedet, tmp_path):
    r = run_cli_here("eval", str(facedet["src"]), "--task", "detection", "--output", "landmarks", "--data",
                str(facedet["data"]), "--reference", str(facedet["src"]))
    _refused(r, "--role")


# --------------------------------------------------------------------------- dynamic H x W
@pytest.fixture(scope="module")
def segnet(tmp_path_factory, shape_cache):
    d = tmp_path_factory.mktemp("seg")
    model = shapes.trained("SegNet", shape_cache)
    example = (torch.zeros(1, 1, 28, 28),)
    dyn = {"image": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", 2: "H", 3: "W"}}
    src = _onnx(model, example, d / "seg.onnx", inputs=["image"], outputs=["mask"], dynamic=dyn)
    near = _onnx(_perturbed(model, 0.05), example, d / "seg_near.onnx", inputs=["image"], outputs=["mask"],
                 dynamic=dyn)
    x = shapes.mnist(None)[0][4000:4030]
    np.savez(d / "seg28.npz", image=x)
    big = torch.nn.functional.interpolate(torch.from_numpy(x), size=(40, 56), mode="bilinear").numpy()
    np.savez(d / "seg40x56.npz", image=big)
    return {"src": src, "near": near, "ir": _ir(src, d / "seg.xml"), "d": d}


@pytest.mark.parametrize("data", ["seg28.npz", "seg40x56.npz"])
def test_eval_dynamic_hw_segmenter_at_two_resolutions(segnet, data):
    out = _ok(run_cli_here("eval", str(segnet["near"]), "--task", "segmentation", "--data", str(segnet["d"] / data),
                      "--reference", str(segnet["ir"]), "--json"))
    h, w = (28, 28) if data == "seg28.npz" else (40, 56)
    assert out["output_shapes"] == {"mask": [1, 2, h, w]}
    assert out["contract"]["inputs"]["image"] == "Nx1xHxW float32"  # the file's symbols, not frozen
    assert out["headline"]["metric"] == "miou" and 0.5 < out["headline"]["value"] < 1.0


def test_file_fixing_a_dim_refuses_another_size(segnet, tmp_path):
    fixed = _onnx(shapes.SegNet(), (torch.zeros(1, 1, 28, 28),), tmp_path / "fixed.onnx", inputs=["image"],
                  outputs=["mask"])
    _refused(run_cli_here("eval", str(fixed), "--input", "image:1x1x40x56", "--task", "segmentation", "--data",
                     str(segnet["d"] / "seg40x56.npz"), "--reference", str(fixed)), "fixes it at 28")


# --------------------------------------------------------------------------- labels by name
@pytest.fixture(scope="module")
def words(tmp_path_factory, shape_cache):
    """The word-labelled classifier as an edgetl-style ONNX: its sidecar lists the label names."""
    d = tmp_path_factory.mktemp("words")
    model = shapes.trained("PooledClassifier", shape_cache)
    path = _onnx(model, (torch.zeros(1, 1, 28, 28),), d / "words.onnx", inputs=["image"], outputs=["logits"],
                 dynamic={"image": {0: "N"}, "logits": {0: "N"}})
    contract = {"inputs": [{"name": "image", "shape": ["N", 1, 28, 28], "dtype": "float32"}],
                "outputs": [{"name": "logits", "role": "logits", "layout": "N,C"}], "task": "classification"}
    (d / "words.onnx.edgetl.json").write_text(json.dumps({"labels": list(shapes.WORDS), "contract": contract}))
    x, y = shapes.mnist(None)
    x, y = x[4000:4200], y[4000:4200]
    order = np.argsort([shapes.WORDS[i] for i in range(10)])  # alphabetical, as class folders sort
    alpha = [shapes.WORDS[i] for i in order]
    np.savez(d / "alpha.npz", image=x, labels=np.array([alpha.index(shapes.WORDS[i]) for i in y]),
             label_names=np.array(alpha))
    np.savez(d / "digits.npz", image=x, labels=y, label_names=np.array([str(i) for i in range(10)]))
    return {"src": path, "d": d}


def test_labels_are_matched_by_name(words):
    out = _ok(run_cli_here("eval", str(words["src"]), "--data", str(words["d"] / "alpha.npz"), "--json"))
    assert out["label_map"]["remapped"] is True and out["accuracy"] > 0.8  # trained: high only if mapped by name


def test_label_names_the_model_lacks_are_refused(words):
    _refused(run_cli_here("eval", str(words["src"]), "--data", str(words["d"] / "digits.npz")), "matched by name",
             code=2)  # DataError: the user's input, exit 2


# --------------------------------------------------------------------------- the artifact and the runtimes
def test_artifact_carries_the_contract_through_stages_and_metadata(vad, words):
    from edgetl.artifact import Artifact, StageRecord
    from edgetl.contract import ModelContract
    from edgetl.models import load_model
    from edgetl.runtimes import open_runtime

    art = load_model(vad["src"])
    assert art.input_spec is None and art.contract.input_names == ("audio", "state", "sr")
    later = art.with_stage(StageRecord(stage="noop"))
    assert later.contract == art.contract
    meta = json.loads(json.dumps(later.metadata()))
    assert ModelContract.from_dict(meta["contract"]) == art.contract
    clf = load_model(words["src"])  # the sidecar's contract: roles and task read back
    assert clf.contract.task.value == "classification" and clf.contract.output("logits").role.value == "logits"
    module = Artifact(format="torch", input_spec=None, labels=(), model=vad["model"], contract=art.contract)
    audio, state = vad["arrays"]
    feed = {"audio": audio[0], "state": state[0], "sr": np.array(16000, np.int64)}
    with open_runtime(module) as rt:
        got = rt.run_named(feed)
    assert [v.shape for v in got.values()] == [(1, 1), (2, 1, 32)]
    with open_runtime(art) as rt:
        onnx_out = rt.run_named(feed)
    np.testing.assert_allclose(list(got.values())[1], onnx_out["new_state"], atol=1e-5)
    with pytest.raises(Exception, match="sr"):
        with open_runtime(art) as rt:
            rt.run_named({"audio": audio[0], "state": state[0]})


def test_zoo_and_checkpoint_classifiers_get_a_contract_from_their_input_spec():
    from edgetl.artifact import InputSpec
    from edgetl.models import load_model

    art = load_model("resnet18", num_classes=4, pretrained=False, input_spec=InputSpec(shape=(3, 40, 48)))
    c = art.contract
    assert c.task.value == "classification" and c.input("input").shape == ("N", 3, 40, 48)
    assert c.outputs[0].shape == ("N", 4) and c.outputs[0].role.value == "logits"


# --------------------------------------------------------------------------- export by the contract
def test_export_dynamic_hw_segmenter_keeps_hw_and_checks_every_output(segnet, shape_cache, tmp_path):
    """A TorchScript segmenter with no sidecar: the contract flags say what it takes; edgetl exports ONNX and
    OpenVINO with H x W dynamic, parity-checks the mask on real inputs, and both files run at two resolutions."""
    ts = torch.jit.trace(shapes.trained("SegNet", shape_cache), torch.zeros(1, 1, 28, 28))
    ts.save(str(tmp_path / "seg.ts"))
    out = tmp_path / "out"
    r = _ok(run_cli_here("export", str(tmp_path / "seg.ts"), "--format", "onnx,openvino", "-o", str(out),
                    "--input", "Nx1xHxW:float32", "--opt-shape", "1x1x28x28", "--task", "segmentation",
                    "--data", str(segnet["d"] / "seg28.npz"), "--json"))
    rows = {row["format"]: row for row in r["exports"]}
    for fmt in ("onnx", "openvino"):
        p = rows[fmt]["parity"]
        assert p["checked"] and p["inputs"].startswith("data:") and p["samples"] == 16
        assert p["headline"]["metric"] == "miou" and p["headline"]["value"] == 1.0
        assert p["max_rel_error"] < 1e-4
    onnx_file, ir = Path(rows["onnx"]["path"]), Path(rows["openvino"]["path"])
    from edgetl.contract_read import read_contract

    for f in (onnx_file, ir):
        c = read_contract(f)
        assert c.task.value == "segmentation" and c.outputs[0].role.value == "mask"
        shape = c.inputs[0].shape
        assert shape[1] == 1 and not isinstance(shape[2], int) and not isinstance(shape[3], int), shape
    for data, hw in (("seg28.npz", [28, 28]), ("seg40x56.npz", [40, 56])):
        e = _ok(run_cli_here("eval", str(onnx_file), "--data", str(segnet["d"] / data), "--reference", str(ir),
                        "--json"))
        assert e["output_shapes"]["output"][2:] == hw
        assert e["headline"]["metric"] == "miou" and e["headline"]["value"] == 1.0


def test_export_three_heads_checks_every_output(facedet, shape_cache, tmp_path):
    ts = torch.jit.trace(shapes.trained("FaceDetLike", shape_cache), torch.zeros(1, 3, 32, 32))
    ts.save(str(tmp_path / "det.ts"))
    r = _ok(run_cli_here("export", str(tmp_path / "det.ts"), "--format", "onnx", "-o", str(tmp_path / "out"),
                    "--input", "1x3x32x32:float32", "--task", "detection", "--role", "output0:boxes:N,A,4:xyxy",
                    "--role", "output1:scores", "--data", str(facedet["data"]), "--json"))
    p = r["exports"][0]["parity"]
    assert {o["output"] for o in p["fidelity"]["outputs"]} == {"output0", "output1", "output2"}
    assert p["headline"]["metric"] == "box_f1" and p["headline"]["value"] == 1.0


def test_export_contract_contradiction_is_refused_before_work(tmp_path):
    ts = torch.jit.trace(shapes.SegNet().eval(), torch.zeros(1, 1, 28, 28))
    ts.save(str(tmp_path / "seg.ts"))
    _refused(run_cli_here("export", str(tmp_path / "seg.ts"), "--format", "onnx", "-o", str(tmp_path / "out"),
                     "--input", "nope:Nx1xHxW"), "nope")
    assert not (tmp_path / "out").exists()
