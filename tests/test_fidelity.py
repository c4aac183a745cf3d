"""Label-free fidelity on real model outputs: identical outputs score perfect, fake-quantized weights score lower
(and lower still with fewer bits), each task's extra metric reads its output layout, shift consistency ranks a
pooled classifier above an aliasing one."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from edgetl.consistency import shift_consistency, translate
from edgetl.contract import merge, parse_flags
from edgetl.contract_read import read_module
from edgetl.errors import ConfigError, ParityError
from edgetl.fidelity import DetectionLayout, compare, ctc_greedy, headline, resolve_metric
from tests import shapes


@pytest.fixture(scope="session")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


def mean_abs_gap(reference, candidate):
    """A user metric, reached as ``tests.test_fidelity:mean_abs_gap``."""
    return {"mean_abs_gap": float(np.mean([np.abs(reference[k] - candidate[k]).mean() for k in reference]))}


def not_a_number(reference, candidate):
    return "high"


def fake_quant(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """Weights rounded to a symmetric per-tensor grid of ``bits`` bits: int8-like noise, on a copy."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                scale = p.abs().max() / (2 ** (bits - 1) - 1)
                p.copy_((p / scale).round() * scale)
    return m


def outputs(model, x, names):
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(names, (o.numpy() for o in out), strict=True))


CASES = {
    "PooledClassifier": (lambda: shapes.mnist(None)[0][4000:4400], dict(task="classification"), "top1_agreement"),
    "SegNet": (lambda: shapes.mnist(None)[0][4000:4100], dict(task="segmentation"), "miou"),
    "CtcRecognizer": (lambda: shapes.ctc_data(300, seed=5)[0],
                      dict(task="sequence", roles=["output:sequence:T,N,C"]), "decode_agreement"),
    "FaceDetLike": (lambda: shapes.det_data(300, seed=5)[0],
                    dict(task="detection", roles=["output0:boxes:N,A,4:xyxy", "output1:scores"],
                         outputs=["0", "1"]), "box_f1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fidelity_ranks_identical_above_int8_above_3bit(name, shape_cache):
    model = shapes.trained(name, shape_cache)
    data_fn, flags, metric = CASES[name]
    x = data_fn()
    contract = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(**flags))
    names = contract.output_names
    ref = outputs(model, x, names)
    same = compare(ref, ref, contract=contract)
    int8 = compare(ref, outputs(fake_quant(model, 8), x, names), contract=contract)
    three = compare(ref, outputs(fake_quant(model, 3), x, names), contract=contract)
    h_same, h8, h3 = (headline(r, contract.task) for r in (same, int8, three))
    assert h_same.metric == metric and h_same.value == 1.0
    assert all(o.cosine == 1.0 and o.snr_db == math.inf and o.max_abs == 0.0 for o in same.outputs)
    for o8, o3 in zip(int8.outputs, three.outputs, strict=True):
        assert 0.99 < o8.cosine < 1.0 and 20.0 < o8.snr_db < math.inf and o8.max_abs > 0
        assert o3.snr_db < o8.snr_db - 10 and o3.cosine < o8.cosine and o3.max_rel > o8.max_rel
    assert 0.9 <= h8.value <= 1.0 and h3.value < h8.value
    assert same.to_dict()["outputs"][0]["snr_db"] == "inf"  # JSON-safe, said plainly


def test_classification_extras_and_kl(shape_cache):
    model = shapes.trained("PooledClassifier", shape_cache)
    x = shapes.mnist(None)[0][4000:4200]
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="classification"))
    ref = outputs(model, x, c.output_names)
    res = compare(ref, outputs(fake_quant(model, 4), x, c.output_names), contract=c)
    cls = res.classification[0]
    assert cls.samples == 200 and cls.top1 <= cls.top5 <= 1.0 and cls.kl > 0
    assert compare(ref, ref, contract=c).classification[0].kl == pytest.approx(0.0, abs=1e-12)


def test_detection_f1_reads_the_box_format_and_says_when_nothing_was_found(shape_cache):
    model = shapes.trained("FaceDetLike", shape_cache)
    x = shapes.det_data(100, seed=9)[0]
    flags = dict(task="detection", roles=["output0:boxes", "output1:scores"], outputs=["0", "1"])
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(**flags))
    ref = outputs(model, x, c.output_names)
    cand = outputs(fake_quant(model, 4), x, c.output_names)
    xyxy = compare(ref, cand, contract=c).detection[0]
    assert xyxy.reference_boxes > 50 and 0 < xyxy.f1 < 1.0 + 1e-12

    def to_xywh(d):
        b = d["output0"]
        return {**d, "output0": np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], -1)}

    c_wh = merge(read_module(model, torch.from_numpy(x[:1])),
                 parse_flags(**{**flags, "roles": ["output0:boxes:N,A,4:xywh", "output1:scores"]}))
    assert compare(to_xywh(ref), to_xywh(cand), contract=c_wh).detection[0].f1 == pytest.approx(xyxy.f1)
    empty = compare(ref, cand, contract=c, detection=DetectionLayout(score_threshold=1.01)).detection[0]
    assert empty.f1 is None and empty.reference_boxes == 0
    with pytest.raises(ConfigError, match="--role NAME:boxes"):
        compare(ref, cand, contract=merge(read_module(model, torch.from_numpy(x[:1])),
                                          parse_flags(task="detection")))


def test_sequence_needs_its_layout_and_decodes_ctc():
    assert ctc_greedy(np.eye(4)[[1, 1, 0, 2, 2, 0, 2]][:, None], layout="T,N,C") == [(1, 2, 2)]
    with pytest.raises(ConfigError, match="T, N and C"):
        ctc_greedy(np.zeros((3, 1, 4)), layout="T,C")
    from edgetl.contract import ModelContract, OutputTensor

    c = ModelContract(inputs=(), outputs=(OutputTensor("out", role="sequence"),), task="sequence")
    with pytest.raises(ConfigError, match="--role out:sequence:T,N,C"):
        compare({"out": np.zeros((3, 1, 4))}, {"out": np.zeros((3, 1, 4))}, contract=c)


def test_user_metric_and_bad_specs(shape_cache):
    model = shapes.trained("SegNet", shape_cache)
    x = shapes.mnist(None)[0][4000:4020]
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="segmentation"))
    ref = outputs(model, x, c.output_names)
    res = compare(ref, outputs(fake_quant(model, 4), x, c.output_names), contract=c,
                  metric="tests.test_fidelity:mean_abs_gap")
    assert res.user["mean_abs_gap"] > 0
    assert headline(res, c.task, metric="mean_abs_gap").value == res.user["mean_abs_gap"]
    for spec, msg in (("nocolon", "module:function"), ("no_such_module_xyz:f", "cannot import"),
                      ("tests.test_fidelity:missing", "no function 'missing'")):
        with pytest.raises(ConfigError, match=msg):
            resolve_metric(spec)
    with pytest.raises(ConfigError, match="returned str"):
        compare(ref, ref, contract=c, metric="tests.test_fidelity:not_a_number")


def test_shape_mismatch_and_nonfinite_are_never_scored(shape_cache):
    model = shapes.trained("SegNet", shape_cache)
    x = shapes.mnist(None)[0][4000:4010]
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="segmentation"))
    ref = outputs(model, x, c.output_names)
    with pytest.raises(ParityError, match="shape"):
        compare(ref, {"output": ref["output"][:, :1]}, contract=c)
    broken = ref["output"].copy()
    broken[0, 0, 0, 0] = np.nan
    o = compare(ref, {"output": broken}, contract=c).outputs[0]
    assert o.nonfinite == 1 and o.cosine is None and o.snr_db is None
    h = headline(compare(ref, {"output": broken}, contract=merge(c, parse_flags(task="generic"))), "generic")
    assert h.metric == "snr_db" and h.value is None


def test_translate_replicates_edges():
    x = np.arange(12).reshape(1, 1, 3, 4)
    right = translate(x, 0, 1)
    assert right[0, 0, 0].tolist() == [0, 0, 1, 2]
    up = translate(x, -1, 0)
    assert up[0, 0, :, 0].tolist() == [4, 8, 8]


def test_shift_consistency_ranks_pooled_above_aliasing_classifier(shape_cache):
    x = shapes.mnist(None)[0][4000:4500]
    scores = {}
    for name in ("PooledClassifier", "FlatClassifier"):
        model = shapes.trained(name, shape_cache)
        c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="classification"))

        def run(feed, model=model):
            with torch.no_grad():
                return {"output": model(torch.from_numpy(feed["image"])).numpy()}

        res = shift_consistency(run, [{"image": x[i : i + 100]} for i in range(0, 500, 100)], contract=c)
        assert res.samples == 500 and 0.0 <= res.consistency <= 1.0 and len(res.per_shift) == 4
        scores[name] = res.consistency
    assert scores["PooledClassifier"] > scores["FlatClassifier"] + 0.02


def test_shift_consistency_of_a_segmenter_is_per_pixel(shape_cache):
    model = shapes.trained("SegNet", shape_cache)
    x = shapes.mnist(None)[0][4000:4040]
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="segmentation"))

    def run(feed):
        with torch.no_grad():
            return {"output": model(torch.from_numpy(feed["image"])).numpy()}

    res = shift_consistency(run, [{"image": x}], contract=c)
    assert res.role == "mask" and 0.95 < res.consistency <= 1.0
    fixed = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
    still = shift_consistency(lambda f: {"output": np.concatenate([fixed, 1 - fixed], 1).repeat(len(f["image"]), 0)},
                              [{"image": x}], contract=c)
    assert still.consistency < 0.7  # a random map that does not move with the image is inconsistent
    with pytest.raises(ConfigError, match="logits or mask"):
        shift_consistency(run, [{"image": x}], contract=merge(c, parse_flags(roles=["output:embedding"])))


def test_batches_of_a_time_major_output_join_on_their_batch_axis(shape_cache):
    model = shapes.trained("CtcRecognizer", shape_cache)
    x = shapes.ctc_data(60, seed=3)[0]
    c = merge(read_module(model, torch.from_numpy(x[:1])),
              parse_flags(task="sequence", roles=["output:sequence:T,N,C"]))
    ref = outputs(model, x, c.output_names)
    cand = outputs(fake_quant(model, 4), x, c.output_names)
    whole = compare(ref, cand, contract=c)
    parts = [(outputs(model, x[i : i + 20], c.output_names), outputs(fake_quant(model, 4), x[i : i + 20],
                                                                     c.output_names)) for i in range(0, 60, 20)]
    split = compare([p[0] for p in parts], [p[1] for p in parts], contract=c)
    assert split.samples == whole.samples == 60
    assert split.sequence[0] == whole.sequence[0]
    assert split.outputs[0].snr_db == pytest.approx(whole.outputs[0].snr_db)


def test_budgets_on_the_task_metric_and_on_snr(shape_cache):
    from edgetl.errors import BudgetError
    from edgetl.fidelity import check_budget

    model = shapes.trained("PooledClassifier", shape_cache)
    x = shapes.mnist(None)[0][4000:4200]
    c = merge(read_module(model, torch.from_numpy(x[:1])), parse_flags(task="classification"))
    ref = outputs(model, x, c.output_names)
    int8 = compare(ref, outputs(fake_quant(model, 8), x, c.output_names), contract=c)
    three = compare(ref, outputs(fake_quant(model, 3), x, c.output_names), contract=c)
    assert check_budget(int8, c.task, max_drop=0.1, min_snr=20).metric == "top1_agreement"
    with pytest.raises(BudgetError, match="exceeds --max-drop 0.1"):
        check_budget(three, c.task, max_drop=0.1)
    with pytest.raises(BudgetError, match="below --min-snr 20"):
        check_budget(three, c.task, min_snr=20)
    with pytest.raises(BudgetError, match="use --min-snr"):
        check_budget(int8, "generic", max_drop=0.1)


def test_importing_the_contract_fidelity_and_data_modules_loads_no_backend():
    import subprocess
    import sys

    code = ("import sys, edgetl.contract, edgetl.contract_read, edgetl.contract_shapes, edgetl.fidelity, "
            "edgetl.consistency, edgetl.inputs; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
