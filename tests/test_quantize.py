"""Quantization: calibration choice, each backend path, TensorRT Q/DQ placement, the budget fallback, bad input.

All on the trained ``lite0_digits`` fixture (EfficientNet-Lite0, ImageNet weights, fine-tuned on digits at 32x32).
The fp32 ONNX is exported once per module and shared; every test quantizes from it or from a fresh checkpoint copy.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edgetl.stages import StageContext
from tests.conftest import run_cli, run_cli_here


@pytest.fixture(scope="module")
def lite0_onnx(lite0_digits_path, tmp_path_factory):
    """The fixture model exported to ONNX (with its edgetl metadata), as a loadable artifact."""
    from edgetl.models import load_model
    from exporters.base import write_metadata
    from exporters.onnx import export_onnx

    path = tmp_path_factory.mktemp("quantize") / "lite0.onnx"
    art = export_onnx(load_model(lite0_digits_path), path)
    write_metadata(art)
    return load_model(path)


# --------------------------------------------------------------------------- calibration
def test_calibration_is_stratified_seeded_and_recorded(digits):
    from edgetl.quantize import select_calibration

    c = select_calibration(digits, samples=300, seed=0)
    assert len(c) == 300
    assert set(c.per_class().values()) == {30}
    assert len(set(c.indices.tolist())) == 300
    # every prefix is balanced too: the first 20 hold two of each class
    assert sorted(np.bincount(c.labels[:20], minlength=10).tolist()) == [2] * 10
    again = select_calibration(digits, samples=300, seed=0)
    assert np.array_equal(c.indices, again.indices)
    other = select_calibration(digits, samples=300, seed=1)
    assert not np.array_equal(c.indices, other.indices)
    rec = c.record()
    assert rec["count"] == 300 and rec["split"] == "train" and len(rec["indices"]) == 300
    assert np.array_equal(digits.train.labels[np.array(rec["indices"])].numpy(), c.labels)


def test_calibration_warns_when_few_and_fails_when_none(digits, caplog):
    import torch

    from edgetl.data import DataSplits, ImageSet
    from edgetl.errors import DataError
    from edgetl.quantize import select_calibration

    with caplog.at_level(logging.WARNING):
        c = select_calibration(digits, samples=50)
    assert len(c) == 50 and set(c.per_class().values()) == {5}
    assert any("fewer than 100" in r.message for r in caplog.records)
    small = DataSplits("tiny", digits.classes, ImageSet(digits.train.images[:37], digits.train.labels[:37]),
                       digits.val, digits.test, 0, (0.7, 0.15, 0.15))
    c = select_calibration(small, samples=300)
    assert len(c) == 37 and any("only 37" in w for w in c.warnings)
    empty = DataSplits("empty", digits.classes, ImageSet(torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                                                         torch.zeros(0, dtype=torch.int64)),
                       digits.val, digits.test, 0, (0.7, 0.15, 0.15))
    with pytest.raises(DataError, match="no calibration data"):
        select_calibration(empty, samples=300)


def test_calibration_choice_is_refused_where_the_backend_estimates_ranges_itself():
    from edgetl.errors import ConfigError
    from edgetl.quantize import QuantizeConfig

    for backend in ("openvino", "pytorch"):  # refused, not silently ignored
        with pytest.raises(ConfigError, match="applies to onnxruntime and tensorrt"):
            QuantizeConfig(backend=backend, calibration="percentile")
        assert QuantizeConfig(backend=backend).calibration.value == "auto"
    assert QuantizeConfig(backend="tensorrt", calibration="percentile").calibration.value == "percentile"


def test_ort_types_follow_the_cpu():
    from edgetl.quantize.onnxruntime import choose_ort_types

    assert choose_ort_types(flags={"avx2", "avx512_vnni"}, machine="x86_64").name == "u8s8"
    assert not choose_ort_types(flags={"avx2", "avx512_vnni"}, machine="x86_64").reduce_range
    assert choose_ort_types(flags={"avx2"}, machine="x86_64").reduce_range
    assert choose_ort_types(flags=set(), machine="aarch64").name == "s8s8"


# --------------------------------------------------------------------------- backends
def test_onnxruntime_static_u8s8_qdq(lite0_onnx, digits, tmp_path):
    import onnx

    from edgetl.quantize import QuantizeConfig, quantize

    out = tmp_path / "q.onnx"
    q = quantize(lite0_onnx, QuantizeConfig(backend="onnxruntime", calib_samples=100, ort_types="u8s8"),
                 data=digits, ctx=StageContext(output=out))
    m = q.history[-1].metrics
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 40 and "DequantizeLinear" in ops
    q_types = {init.data_type for init in proto.graph.initializer if init.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT8 in q_types  # u8 activations
    assert m["backend_info"]["types"] == "u8s8" and m["backend_info"]["per_channel"]
    assert m["calibration"]["count"] == 100 and q.history[-1].stage == "quantize"
    assert (out.parent / (out.name + ".edgetl.json")).exists()
    assert m["size_bytes"] < 0.5 * m["fp32_size_bytes"]
    # calibration "auto" (the default) quantized with both estimators and kept the more accurate one
    tried = [a for a in m["attempts"] if not a["kept_float"]]
    assert sorted(a["calibration"] for a in tried) == ["mean-minmax", "percentile"]
    best = max(tried, key=lambda a: (a["accuracy"], a["agreement"]))
    assert m["backend_info"]["calibration"] == best["calibration"] and m["accuracy"] == best["accuracy"]
    # This 32x32 digits model has per-tensor activation ranges that differ 30x between channels: int8 loses
    # accuracy. Measured: global minmax 60.6 %, ORT's default percentile (symmetric, 99.999) ~61 %, mean-minmax
    # 72.1 % (agreement 0.77), fp32 91.1 %. The bound guards against falling back to the extreme-range estimators.
    assert m["fp32_accuracy"] > 0.85 and m["accuracy"] > 0.68 and m["agreement"] > 0.72


def test_openvino_nncf_int8_is_accurate(lite0_digits_path, digits, tmp_path):
    from edgetl.models import load_model
    from edgetl.quantize import QuantizeConfig, quantize

    out = tmp_path / "q.xml"
    q = quantize(load_model(lite0_digits_path), QuantizeConfig(backend="openvino", calib_samples=300),
                 data=digits, ctx=StageContext(output=out))
    m = q.history[-1].metrics
    assert out.exists() and out.with_suffix(".bin").exists()
    assert 'type="FakeQuantize"' in out.read_text() or "i8" in out.read_text()
    assert m["backend_info"]["preset"] == "mixed"  # Lite0 here has SiLU activations: asymmetric activations
    assert m["fp32_accuracy"] - m["accuracy"] <= 0.02
    assert m["agreement"] >= 0.9
    from edgetl.evaluate import evaluate
    from edgetl.models import load_model as reload

    assert abs(evaluate(reload(out), digits, split="val")["accuracy"] - m["accuracy"]) < 1e-9


def _producers(proto):
    return {o: n for n in proto.graph.node for o in n.output}


def test_tensorrt_qdq_placement_and_accuracy(lite0_onnx, digits, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgetl.quantize import QuantizeConfig, quantize

    out = tmp_path / "trt.onnx"
    q = quantize(lite0_onnx, QuantizeConfig(backend="tensorrt"), data=digits, ctx=StageContext(output=out))
    m = q.history[-1].metrics
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    prod = _producers(proto)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weighted = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 50
    for n in weighted:
        for k in (0, 1):  # activation and weight both come through a DequantizeLinear
            assert prod[n.input[k]].op_type == "DequantizeLinear", (n.name, k)
        wdq = prod[n.input[1]]
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        w, scale, zp = inits[wdq.input[0]], inits[wdq.input[1]], inits[wdq.input[2]]
        assert w.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()  # symmetric int8
        assert axis == 0 and scale.shape == (w.shape[0],)  # per output channel
        adq = prod[n.input[0]]
        assert inits[adq.input[2]].dtype == np.int8 and not inits[adq.input[2]].any()
        assert prod[adq.input[0]].op_type == "QuantizeLinear"
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 9
    for n in adds:  # residual adds: both inputs quantized
        assert all(prod[i].op_type == "DequantizeLinear" for i in n.input)
    # No Q/DQ on outputs of weighted layers: what feeds a QuantizeLinear is never a Conv unless a consumer needs it
    assert m["backend_info"]["residual_adds"] == 9
    assert m["fp32_accuracy"] > 0.85 and m["agreement"] > 0.75


def test_budget_fallback_keeps_layers_in_float_or_raises_best(lite0_onnx, digits, tmp_path):
    from edgetl.errors import BudgetError
    from edgetl.quantize import QuantizeConfig, quantize

    cfg = QuantizeConfig(backend="tensorrt", calib_samples=100, max_drop=0.0, max_float_layers=2,
                         sensitivity_samples=16, calibration="minmax")
    with pytest.raises(BudgetError) as err:
        quantize(lite0_onnx, cfg, data=digits, ctx=StageContext(output=tmp_path / "never.onnx"))
    assert "best reached keeps" in str(err.value) and "lost" in str(err.value)
    assert not (tmp_path / "never.onnx").exists()
    best = err.value.metrics
    assert best["drop_points"] > 0 and len(best["kept_float"]) <= 2
    # with --allow-drop the best is written and the attempts say what each float layer bought
    q = quantize(lite0_onnx, QuantizeConfig(**{**cfg.to_dict(), "allow_drop": True}), data=digits,
                 ctx=StageContext(output=tmp_path / "best.onnx"))
    m = q.history[-1].metrics
    assert m["budget_met"] is False and len(m["attempts"]) == 3
    assert [len(a["kept_float"]) for a in m["attempts"]] == [0, 1, 2]
    assert m["drop_points"] == min(a["drop_points"] for a in m["attempts"])
    assert m["sensitivity"][0]["added"] >= m["sensitivity"][-1]["added"]
    assert (tmp_path / "best.onnx").exists()


def test_unquantizable_op_is_named_and_kept_float(lite0_onnx, digits, tmp_path):
    """Replace the classifier Gemm by an equivalent Einsum, which ONNX Runtime's QDQ quantizer does not handle."""
    import onnx
    from onnx import helper, numpy_helper

    from edgetl.models import load_model
    from edgetl.quantize import QuantizeConfig, quantize

    proto = onnx.load(str(lite0_onnx.path))
    inits = {i.name: i for i in proto.graph.initializer}
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    w = numpy_helper.to_array(inits[gemm.input[1]])
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    proto.graph.initializer.append(numpy_helper.from_array(w if trans_b else w.T, "fc_einsum.weight"))
    i = list(proto.graph.node).index(gemm)
    ein = helper.make_node("Einsum", [gemm.input[0], "fc_einsum.weight"], ["fc_mm"], equation="nc,kc->nk",
                           name="fc_einsum")
    add = helper.make_node("Add", ["fc_mm", gemm.input[2]], list(gemm.output), name="fc_bias")
    proto.graph.node.remove(gemm)
    proto.graph.node.insert(i, add)
    proto.graph.node.insert(i, ein)
    path = tmp_path / "einsum.onnx"
    onnx.save(proto, str(path))
    (tmp_path / "einsum.onnx.edgetl.json").write_text(
        (lite0_onnx.path.parent / (lite0_onnx.path.name + ".edgetl.json")).read_text())
    q = quantize(load_model(path), QuantizeConfig(backend="onnxruntime", calib_samples=50), data=digits,
                 ctx=StageContext(output=tmp_path / "q.onnx"))
    names = [(u["op"], u["node"]) for u in q.history[-1].metrics["unquantizable"]]
    assert ("Einsum", "fc_einsum") in names


# --------------------------------------------------------------------------- CLI and bad input
def test_cli_json_report(lite0_onnx, tmp_path):
    out = tmp_path / "cli.onnx"
    r = run_cli_here("quantize", str(lite0_onnx.path), "--data", "digits", "--backend", "tensorrt", "--calib-samples",
                     "60", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("accuracy_before", "accuracy_after", "agreement", "size_bytes", "kept_float", "drop_points"):
        assert key in res
    assert res["calibration"]["count"] == 60 and any("fewer than 100" in w for w in res["warnings"])
    # existing output without --overwrite: refused before any work, file untouched
    before = out.read_bytes()
    r = run_cli_here("quantize", str(lite0_onnx.path), "--data", "digits", "--backend", "tensorrt", "-o", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_bytes() == before


def test_cli_json_stdout_stays_one_object_when_libraries_print(lite0_onnx, tmp_path):
    # ONNX Runtime's percentile calibrator prints its progress to stdout with print(); --json must still give
    # exactly one JSON object there (the library's text goes to stderr). Its prints are third-party chatter,
    # shown with --verbose only (tests/test_chatter.py checks the quiet side).
    out = tmp_path / "ort.onnx"
    r = run_cli("quantize", str(lite0_onnx.path), "--data", "digits", "--backend", "onnxruntime",
                "--calibration", "percentile", "--calib-samples", "40", "-o", str(out), "--json", "--verbose")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["backend_info"]["calibration"] == "percentile" and out.exists()
    assert "histogram" in r.stderr  # what the calibrator printed is not lost, only moved


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrrt"], "did you mean 'tensorrt'"),
    (["--calib-samples", "0"], "--calib-samples must be at least 1"),
    (["--precision", "int4"], "unknown quantization precision"),
    (["--backend", "openvino"], "must end in .xml"),
])
def test_cli_bad_options(lite0_onnx, tmp_path, args, message):
    out = tmp_path / "x.onnx"
    r = run_cli_here("quantize", str(lite0_onnx.path), "--data", "digits", "-o", str(out), *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and not out.exists()


def test_cli_budget_unmet_exits_nonzero_without_output(lite0_onnx, tmp_path):
    out = tmp_path / "b.onnx"
    # global minmax ranges (measured ~61 % vs 91 % fp32 here): one float layer cannot win back a zero-drop budget
    r = run_cli_here("quantize", str(lite0_onnx.path), "--data", "digits", "--backend", "tensorrt", "--calib-samples",
                     "50", "--calibration", "minmax", "--max-drop", "0", "--max-float-layers", "1", "-o", str(out),
                     "--json")
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res["error_type"] == "BudgetError" and "best reached" in res["error"]
    assert not out.exists() and not list(tmp_path.glob(".*part*"))
