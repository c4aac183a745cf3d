"""Quantize any model from the command line: unlabeled calibration from ``--data`` read by the model's contract,
the check by label-free fidelity on EVERY output against the fp32 model, the budget on the task's metric
(``--max-drop``, points of agreement) or ``--min-snr``; the record says which metric it judged.

The models are the small real ones of :mod:`tests.shapes` (trained briefly, cached): a three-input model with a
recurrent state and an int64 sample rate, a three-head detector with PReLU, a segmenter with dynamic H x W, as
ONNX files with no edgetl sidecar (OpenVINO / NNCF), and a state dict of ``--arch tests.shapes:SegNet`` (PT2E).
"""

from __future__ import annotations

import nncf  # noqa: F401  (part of the test install: missing is a failure, not a skip)
import numpy as np
import openvino  # noqa: F401  (part of the test install: missing is a failure, not a skip)
import pytest
import torch

from tests import shapes
from tests.cli_checks import ok_json as _ok
from tests.cli_checks import onnx_of as _onnx
from tests.cli_checks import refused as _refused
from tests.conftest import run_cli_here


@pytest.fixture(scope="module")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


def _per_output(out):
    return {o["output"]: o for o in out["fidelity"]["outputs"]}


def _fake_quantized(xml) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ordered_ops())


# --------------------------------------------------------------------------- three inputs, two outputs
@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    d = tmp_path_factory.mktemp("qvad")
    torch.manual_seed(0)
    model = shapes.VadLike().eval()
    example = (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000))
    src = _onnx(model, example, d / "vad.onnx", inputs=["audio", "state", "sr"], outputs=["prob", "new_state"],
                dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})
    rng = np.random.default_rng(1)
    n = 60
    np.savez(d / "vad.npz", audio=rng.standard_normal((n, 1, 256)).astype(np.float32),
             state=rng.uniform(-1, 1, (n, 2, 1, 32)).astype(np.float32), sr=np.full((n,), 16000, np.int64))
    return {"src": src, "data": d / "vad.npz", "d": d}


def test_multi_input_model_quantizes_with_openvino_and_fidelity_on_every_output(vad):
    out_path = vad["d"] / "vad.int8.xml"
    out = _ok(run_cli_here("quantize", str(vad["src"]), "--backend", "openvino", "--data", str(vad["data"]),
                      "--min-snr", "15", "-o", str(out_path), "--json"))
    assert out["by_contract"] and out["task"] == "generic" and out["metric"] == "snr_db"
    per = _per_output(out)
    assert set(per) == {"prob", "new_state"}  # every output, the recurrent state too
    for o in per.values():  # really quantized: close to fp32, not equal to it
        assert 15 <= o["snr_db"] < 200 and 0.9 < o["cosine"] < 1.0 and o["max_abs"] > 0
    assert out["headline"]["value"] == min(o["snr_db"] for o in per.values())
    assert out["budget_met"] is True and out["min_snr"] == 15 and out["max_drop"] is None
    cal = out["calibration"]
    assert cal["count"] == 48 and cal["check_samples"] == 12 and cal["disjoint"] is True
    assert any("fewer than 100" in w for w in out["warnings"])
    assert _fake_quantized(out_path) > 0
    from edgetl.contract_read import read_contract

    c = read_contract(out_path)  # the delivered IR keeps the inputs' names and the dynamic batch
    assert c.input_names == ("audio", "state", "sr") and not isinstance(c.input("audio").shape[0], int)


def test_multi_input_model_quantizes_with_onnxruntime_from_feeds(vad):
    out_path = vad["d"] / "vad.int8.onnx"
    out = _ok(run_cli_here("quantize", str(vad["src"]), "--backend", "onnxruntime", "--data", str(vad["data"]),
                      "--min-snr", "15", "-o", str(out_path), "--json"))
    per = _per_output(out)
    assert set(per) == {"prob", "new_state"} and all(15 <= o["snr_db"] < 200 for o in per.values())
    assert out["backend_info"]["format"] == "QDQ" and out["backend_info"]["calibration_feeds"] == 48
    assert {a["calibration"] for a in out["attempts"]} == {"percentile", "mean-minmax"}  # calibration auto
    import onnx

    ops = {n.op_type for n in onnx.load(str(out_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert [i.name for i in onnx.load(str(out_path)).graph.input] == ["audio", "state", "sr"]


def test_generic_task_refuses_max_drop_and_warns_without_a_budget(vad, tmp_path):
    _refused(run_cli_here("quantize", str(vad["src"]), "--backend", "openvino", "--data", str(vad["data"]),
                     "--max-drop", "1", "-o", str(tmp_path / "a.xml")), "--min-snr")
    assert not (tmp_path / "a.xml").exists()
    out = _ok(run_cli_here("quantize", str(vad["src"]), "--backend", "openvino", "--data", str(vad["data"]),
                      "-o", str(tmp_path / "b.xml"), "--json"))
    assert out["budget_met"] is None and any("no fidelity budget" in w for w in out["warnings"])
    _refused(run_cli_here("quantize", str(vad["src"]), "--backend", "openvino", "--input", "audio:Nx128",
                     "--data", str(vad["data"]), "-o", str(tmp_path / "d.xml")), "256")


def test_tensorrt_qdq_of_a_three_input_model_calibrates_from_feeds_and_checks_every_output(vad):
    """TensorRT Q/DQ by the contract: symmetric int8 scales from the unlabeled feeds of all three inputs (the
    state too, the int64 sample rate passed through), fidelity of every output in ONNX Runtime (no engine here)."""
    import onnx

    out_path = vad["d"] / "vad.qdq.onnx"
    out = _ok(run_cli_here("quantize", str(vad["src"]), "--backend", "tensorrt", "--data", str(vad["data"]),
                      "--min-snr", "20", "-o", str(out_path), "--json"))
    assert out["by_contract"] and out["backend"] == "tensorrt" and out["budget_met"] is True
    per = _per_output(out)
    assert set(per) == {"prob", "new_state"} and all(20 <= o["snr_db"] < 200 for o in per.values())
    info = out["backend_info"]
    assert info["symmetric"] and info["quantized_layers"] == 4 and info["activation_quantizers"] == 4
    assert out["calibration"]["count"] == 48 and out["calibration"]["disjoint"] is True
    graph = onnx.load(str(out_path)).graph
    assert [i.name for i in graph.input] == ["audio", "state", "sr"]
    zero_points = [i for i in graph.initializer if i.name == "qdq_zero_point_int8"]
    assert zero_points and onnx.numpy_helper.to_array(zero_points[0]) == 0  # symmetric, as TensorRT takes it
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 4


def test_tensorrt_qdq_of_the_detector_is_judged_on_box_f1_and_every_head(facedet):
    out = _ok(run_cli_here("quantize", str(facedet["src"]), "--backend", "tensorrt", *DET, "--data",
                      str(facedet["data"]), "--calibration", "percentile", "--min-snr", "30", "--max-drop", "10",
                      "-o", str(facedet["d"] / "det.qdq.onnx"), "--json"))
    assert out["metric"] == "box_f1" and out["budget_met"] is True and out["headline"]["value"] >= 0.9
    assert set(_per_output(out)) == {"boxes", "scores", "landmarks"}
    assert all(30 <= o["snr_db"] < 200 for o in out["fidelity"]["outputs"])
    assert "ONNX Runtime" in out["note"]


# --------------------------------------------------------------------------- three heads
@pytest.fixture(scope="module")
def facedet(tmp_path_factory, shape_cache):
    d = tmp_path_factory.mktemp("qdet")
    model = shapes.trained("FaceDetLike", shape_cache)
    src = _onnx(model, (torch.zeros(1, 3, 32, 32),), d / "det.onnx", inputs=["image"],
                outputs=["boxes", "scores", "landmarks"])
    images, _ = shapes.det_data(60, seed=7)
    np.savez(d / "det.npz", image=images)
    return {"src": src, "data": d / "det.npz", "d": d}


DET = ("--task", "detection", "--role", "boxes:boxes:N,A,4:xyxy", "--role", "scores:scores")


def test_three_head_detector_is_judged_on_box_f1_and_every_head(facedet):
    out = _ok(run_cli_here("quantize", str(facedet["src"]), "--backend", "openvino", *DET, "--data", str(facedet["data"]),
                      "--max-drop", "10", "-o", str(facedet["d"] / "det.int8.xml"), "--json"))
    assert out["metric"] == "box_f1" and out["headline"]["output"] == "boxes"
    assert set(_per_output(out)) == {"boxes", "scores", "landmarks"}
    det = out["fidelity"]["detection"][0]
    assert det["reference_boxes"] > 0  # the trained heads find the digits: F1 is over real boxes
    assert out["headline"]["value"] >= 0.9 and out["budget_met"] is True and out["max_drop"] == 10
    assert all(o["snr_db"] < 200 for o in out["fidelity"]["outputs"])


def test_fidelity_budget_that_cannot_be_met_writes_nothing(facedet, tmp_path):
    target = tmp_path / "det.int8.xml"
    r = run_cli_here("quantize", str(facedet["src"]), "--backend", "openvino", *DET, "--data", str(facedet["data"]),
                "--min-snr", "200", "--max-float-layers", "1", "-o", str(target))
    assert r.returncode == 1, r.stdout + r.stderr  # a runtime failure: after the progress lines, one error line
    last = r.stderr.strip().splitlines()[-1]
    assert "fidelity budget not met" in last and "SNR" in last and "--allow-drop" in last, last
    assert not target.exists() and not list(tmp_path.iterdir())


def test_onnxruntime_fallback_keeps_layers_in_float_for_a_three_head_detector(facedet):
    """ORT's per-layer ranking taps the feeds by input name: over an SNR budget, the most sensitive layers go
    back to float one at a time, each candidate judged on every head, until the budget holds."""
    import onnx

    out_path = facedet["d"] / "det.fallback.int8.onnx"
    out = _ok(run_cli_here("quantize", str(facedet["src"]), "--backend", "onnxruntime", *DET, "--calibration",
                      "percentile", "--data", str(facedet["data"]), "--min-snr", "40", "-o", str(out_path), "--json"))
    first, chosen = out["attempts"][0], out["attempts"][-1]
    assert first["kept_float"] == [] and first["within_budget"] is False and min(first["snr_db"].values()) < 40
    assert out["budget_met"] is True and out["kept_float"] and chosen["within_budget"] is True
    assert [k["layer"] for k in out["kept_float"]] == chosen["kept_float"]
    per = _per_output(out)
    assert set(per) == {"boxes", "scores", "landmarks"} and all(40 <= o["snr_db"] < 200 for o in per.values())
    kept = {k["node"] for k in out["kept_float"]}
    graph = onnx.load(str(out_path)).graph
    produced = {o: n for n in graph.node for o in n.output}
    for n in graph.node:  # the kept layers read float weights; the others still go through DequantizeLinear
        if n.op_type == "Conv":
            via_dq = produced.get(n.input[1]) is not None and produced[n.input[1]].op_type == "DequantizeLinear"
            assert via_dq != (n.name in kept), n.name


def test_onnxruntime_fallback_ranks_the_layers_of_a_three_input_model(vad, tmp_path):
    """The ranking feeds all three inputs (a state, an int64 sample rate); layer errors are finite per layer, and
    a budget the float layers cannot reach is refused after trying them, writing nothing."""
    from edgetl.quantize.onnxruntime import choose_ort_types, compute_nodes, layer_errors
    from edgetl.quantize.ort_feeds import quantize_static_feeds

    data = np.load(vad["data"])
    feeds = [{k: data[k][i] for k in ("audio", "state")} | {"sr": data["sr"][i]} for i in range(12)]
    q = tmp_path / "q.onnx"
    quantize_static_feeds(vad["src"], q, feeds, types=choose_ort_types())
    ranked = layer_errors(vad["src"], q, feeds, compute_nodes(vad["src"]))
    assert {r["layer"] for r in ranked} == {"feat", "cell0", "cell1", "head"}
    assert all(np.isfinite(r["added"]) and r["nsr_out"] > 0 for r in ranked)
    target = tmp_path / "vad.int8.onnx"
    r = run_cli_here("quantize", str(vad["src"]), "--backend", "onnxruntime", "--data", str(vad["data"]), "--min-snr",
                "60", "--max-float-layers", "2", "-o", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "keeps 2 layer(s) in float" in last and "SNR" in last, last
    assert not target.exists()


# --------------------------------------------------------------------------- dynamic H x W
@pytest.fixture(scope="module")
def segnet(tmp_path_factory, shape_cache):
    d = tmp_path_factory.mktemp("qseg")
    model = shapes.trained("SegNet", shape_cache)
    dyn = {"image": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", 2: "H", 3: "W"}}
    src = _onnx(model, (torch.zeros(1, 1, 28, 28),), d / "seg.onnx", inputs=["image"], outputs=["mask"], dynamic=dyn)
    torch.save(model.state_dict(), d / "seg.pth")
    x = shapes.mnist(None)[0][4000:4060]
    np.savez(d / "seg28.npz", image=x)
    return {"src": src, "pth": d / "seg.pth", "data": d / "seg28.npz", "d": d}


def test_dynamic_hw_segmenter_keeps_hw_dynamic_and_is_judged_on_miou(segnet):
    out_path = segnet["d"] / "seg.int8.xml"
    out = _ok(run_cli_here("quantize", str(segnet["src"]), "--backend", "openvino", "--task", "segmentation",
                      "--data", str(segnet["data"]), "--max-drop", "5", "-o", str(out_path), "--json"))
    assert out["metric"] == "miou" and out["max_drop"] == 5 and out["budget_met"] is True
    assert 0.95 <= out["headline"]["value"] <= 1.0 and _per_output(out)["mask"]["snr_db"] < 200
    from edgetl.contract_read import read_contract

    shape = read_contract(out_path).inputs[0].shape
    assert not isinstance(shape[2], int) and not isinstance(shape[3], int), shape
    big = segnet["d"] / "seg40x56.npz"  # and the int8 IR runs at another resolution, faithful there too
    x = np.load(segnet["data"])["image"][:8]
    np.savez(big, image=torch.nn.functional.interpolate(torch.from_numpy(x), size=(40, 56)).numpy())
    e = _ok(run_cli_here("eval", str(out_path), "--task", "segmentation", "--data", str(big), "--reference",
                    str(segnet["src"]), "--json"))
    assert e["output_shapes"]["mask"] == [1, 2, 40, 56] and e["headline"]["value"] > 0.9


def test_pt2e_quantizes_own_architecture_state_dict_by_contract(segnet):
    out_path = segnet["d"] / "seg.int8.pte"
    out = _ok(run_cli_here("quantize", str(segnet["pth"]), "--arch", "tests.shapes:SegNet", "--backend", "pytorch",
                      "--input", "image:1x1x28x28:float32", "--task", "segmentation", "--data", str(segnet["data"]),
                      "--max-drop", "5", "-o", str(out_path), "--json"))
    assert out["metric"] == "miou" and out["budget_met"] is True and 0.95 <= out["headline"]["value"] <= 1.0
    assert out["backend_info"]["quantizer"] == "executorch XNNPACKQuantizer" and out_path.exists()
    assert out["backend_info"]["calibration_calls"] == out["calibration"]["count"]  # one real sample per call
    assert _per_output(out)["output"]["snr_db"] < 200  # int8 kernels really ran


# --------------------------------------------------------------------------- unlabeled folders and functions
def test_classifier_checkpoint_calibrates_from_an_unlabeled_folder_and_a_function(tmp_path, shape_cache):
    """A labelled classifier (own architecture, edgetl checkpoint with an input spec) and data without labels: a
    flat image folder (OpenVINO) and ``module:function`` (PT2E); judged on top-1 agreement with the fp32 model."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from edgetl.artifact import Artifact, InputSpec
    from edgetl.models import save_model

    arch = "tests.shapes:PooledClassifier"
    art = Artifact(format="torch", model=shapes.trained("PooledClassifier", shape_cache), arch=arch,
                   input_spec=InputSpec(shape=(1, 28, 28), mean=(0.0,), std=(1.0,)), labels=shapes.WORDS)
    ckpt = save_model(art, tmp_path / "words.pt")
    x = shapes.mnist(None)[0][4000:4060]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate((x * 255).round().astype(np.uint8)):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    out = _ok(run_cli_here("quantize", str(ckpt), "--arch", arch, "--backend", "openvino", "--data", str(folder),
                      "--max-drop", "10", "-o", str(tmp_path / "w.xml"), "--json"))
    assert out["by_contract"] and out["task"] == "classification" and out["metric"] == "top1_agreement"
    assert out["calibration"]["dataset"] == str(folder) and out["calibration"]["count"] == 48
    assert out["headline"]["value"] >= 0.9 and out["budget_met"] is True and _fake_quantized(tmp_path / "w.xml")
    np.save(tmp_path / "x.npy", x[:30])
    (tmp_path / "calib_fn.py").write_text(
        "import numpy as np\n\n\ndef samples():\n"
        f"    for img in np.load({str(tmp_path / 'x.npy')!r}):\n        yield {{'image': img[None]}}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "edgetl.cli", "quantize", str(ckpt), "--arch", arch, "--backend",
                        "pytorch", "--data", "calib_fn:samples", "--max-drop", "10", "-o", str(tmp_path / "w.pte"),
                        "--json"], capture_output=True, text=True, env=env, timeout=900)
    pte = _ok(r)
    assert pte["metric"] == "top1_agreement" and pte["calibration"]["dataset"] == "calib_fn:samples"
    assert pte["calibration"]["count"] == 24 and pte["calibration"]["check_samples"] == 6
    assert pte["headline"]["value"] >= 0.8 and (tmp_path / "w.pte").exists()
