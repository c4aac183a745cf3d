"""Exporters on the real fine-tuned EfficientNet-Lite0 (digits, 32x32): every format that runs here, with parity.

One session-wide export of onnx/openvino/ort/executorch is shared by the tests below; each reloads its file
through ``edgetl.models.load_model`` and evaluates it through ``edgetl.evaluate.evaluate`` as a user would.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.errors import ConfigError, ExportError, MissingDependencyError, ParityError, UnknownNameError

RUNNABLE = ["onnx", "openvino", "ort", "executorch"]


@pytest.fixture(scope="session")
def exported(lite0_digits, digits, tmp_path_factory):
    from exporters.base import export

    out = tmp_path_factory.mktemp("exports") / "lite0"
    arts = export(lite0_digits, RUNNABLE, out, data=digits, name="lite0")
    return out, dict(zip(RUNNABLE, arts, strict=True))


@pytest.fixture(scope="session")
def torch_accuracy(lite0_digits, digits):
    from edgetl.evaluate import evaluate

    return evaluate(lite0_digits, digits, split="test")["accuracy"]


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_every_format_reloads_runs_and_matches_the_source(exported, digits, torch_accuracy, fmt):
    from edgetl.evaluate import evaluate
    from edgetl.models import load_model

    out, arts = exported
    art = arts[fmt]
    parity = art.history[-1].metrics["parity"]
    assert parity["checked"] and parity["samples"] == 16
    assert "digits" in parity["inputs"] and not parity["inputs"].startswith("synthetic")
    assert parity["max_rel_error"] < 1e-4, parity  # fp32 runtimes reorder sums: ~1e-6 measured
    assert parity["top1_agreement"] == 1.0
    reloaded = load_model(art.path)
    assert reloaded.format is Format.parse(fmt if fmt != "ort" else "ort")
    assert reloaded.labels == tuple(digits.classes)
    assert reloaded.input_spec.shape == (3, 32, 32)
    assert [r.stage for r in reloaded.history][-1] == "export"
    acc = evaluate(reloaded, digits, split="test")["accuracy"]
    assert acc == pytest.approx(torch_accuracy, abs=1 / 270 + 1e-9)  # at most one flipped sample of 270
    assert acc > 0.5  # a trained model (10 classes), not chance


def test_manifest_and_files(exported):
    out, arts = exported
    manifest = json.loads((out / "export.json").read_text())
    assert [e["format"] for e in manifest["exports"]] == RUNNABLE
    assert all(e["parity"]["checked"] for e in manifest["exports"])
    names = {p.name for p in out.iterdir()}
    assert {"lite0.onnx", "lite0.xml", "lite0.bin", "lite0.ort", "lite0.pte", "lite0.onnx.edgetl.json",
            "lite0.ort.required_operators.config"} <= names
    assert not any(n.startswith(".") for n in names), names  # no staging leftovers


def test_onnx_is_checked_dynamo_graph_with_global_pool_and_embedded_metadata(exported):
    import onnx

    _, arts = exported
    art = arts["onnx"]
    proto = onnx.load(str(art.path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops
    assert art.extra["onnx_exporter"] == "dynamo" and art.extra["opset"] == 18
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["edgetl"])
    assert meta["input_spec"]["shape"] == [3, 32, 32]
    assert meta["labels"] == [str(i) for i in range(10)]
    assert [r["stage"] for r in meta["history"]] == ["finetune", "export"]
    assert meta["history"][-1]["metrics"]["parity"]["max_abs_error"] < 1e-3
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]


def test_openvino_ir_is_true_fp32_and_static(exported):
    import openvino as ov

    _, arts = exported
    model = ov.Core().read_model(str(arts["openvino"].path))
    assert list(model.inputs[0].get_partial_shape().to_shape()) == [1, 3, 32, 32]
    const_types = {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                   if op.get_type_name() == "Constant"}
    assert "f16" not in const_types and "f32" in const_types


def test_openvino_fp16_from_onnx_is_compressed_and_within_fp16_parity(exported, lite0_digits, digits, tmp_path):
    import openvino as ov

    from exporters.openvino import export_openvino
    from exporters.parity import check_parity, parity_inputs

    _, arts = exported
    ir = export_openvino(arts["onnx"], tmp_path / "m16.xml", compress_to_fp16=True)
    model = ov.Core().read_model(str(ir.path))
    assert any(op.get_output_element_type(0).get_type_name() == "f16" for op in model.get_ops()
               if op.get_type_name() == "Constant")
    assert (tmp_path / "m16.bin").stat().st_size < arts["openvino"].path.with_suffix(".bin").stat().st_size * 0.6
    m = check_parity(lite0_digits, ir, parity_inputs(lite0_digits, data=digits), precision="fp16")
    assert 1e-4 < m["max_rel_error"] < 0.1 and m["top1_agreement"] >= 0.95  # fp16 weights: larger than fp32


def test_executorch_program_is_xnnpack_delegated(exported):
    _, arts = exported
    art = arts["executorch"]
    assert art.extra["executorch_non_delegated_ops"] == {}  # every compute op went to XNNPACK
    assert art.path.read_bytes()[4:8] == b"ET12"  # the ExecuTorch flatbuffer identifier


# --------------------------------------------------------------------------- dynamic batch
def test_dynamic_batch_onnx_and_openvino_run_batch_1_and_3(lite0_digits, digits, tmp_path):
    import onnxruntime as ort
    import torch

    from benchmarks.runners import open_runner
    from edgetl.data import prepare
    from exporters.base import ExportOptions, export

    onnx_art, ir_art = export(lite0_digits, "onnx,openvino", tmp_path / "dyn",
                              options=ExportOptions(dynamic_batch=True), data=digits)
    x = prepare(digits.test.images[:3], lite0_digits.input_spec)
    with torch.inference_mode():
        ref = lite0_digits.model(x).numpy()
    sess = ort.InferenceSession(str(onnx_art.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (1, 3):
        out = sess.run(None, {"input": x[:b].numpy()})[0]
        np.testing.assert_allclose(out, ref[:b], atol=1e-4)
    assert ir_art.extra["input_shape"] == ["?", 3, 32, 32]
    for b in (1, 3):
        with open_runner(ir_art, extra={"batch": b}) as r:
            np.testing.assert_allclose(r.run(x[:b].numpy()), ref[:b], atol=1e-4)


class TinyCnn:
    """A small conv net for structural checks (random init; never used for accuracy)."""

    @staticmethod
    def artifact() -> Artifact:
        import torch.nn as nn

        torch_model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                    nn.Flatten(), nn.Linear(8, 4)).eval()
        return Artifact(format=Format.TORCH, model=torch_model, input_spec=InputSpec(shape=(3, 16, 16)),
                        labels=("a", "b", "c", "d"))


def test_dynamic_batch_executorch_runs_batch_1_and_3_and_records_its_real_bound(tmp_path):
    import torch

    from edgetl.models import load_model
    from exporters.executorch import export_executorch
    from exporters.parity import run_artifact

    art = TinyCnn.artifact()
    pte = export_executorch(art, tmp_path / "tiny.pte", dynamic_batch=True, max_batch=32)
    assert 1 < pte.extra["max_batch"] <= 32  # ExecuTorch 1.5 plans at most 15 whatever is asked
    from executorch.runtime import Runtime

    from benchmarks.runners.executorch_runner import planned_batch

    # the recorded bound is the one the written program really plans for, read back from the file
    assert pte.extra["max_batch"] == planned_batch(Runtime.get().load_program(str(pte.path)))
    x = torch.randn(40, 3, 16, 16)
    with torch.inference_mode():
        ref = art.model(x).numpy()
    for b in (1, 3, 40):  # 40 exceeds the plan and runs in chunks
        np.testing.assert_allclose(run_artifact(pte, x[:b].numpy()), ref[:b], atol=1e-5)
    from exporters.base import write_metadata

    write_metadata(pte)
    assert load_model(pte.path).extra["dynamic_batch"] is True


# --------------------------------------------------------------------------- pruned model
def test_pruned_model_exports_smaller_with_parity(lite0_digits, digits, exported, tmp_path):
    import torch
    import torch_pruning as tp

    from edgetl.models import classifier_layer
    from exporters.base import export

    pruned = copy.deepcopy(lite0_digits)
    model = pruned.model
    head = classifier_layer(model)[1]
    example = torch.randn(pruned.input_spec.batch_shape(1))
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[head], round_to=8)
    pruner.step()
    n_before = sum(p.numel() for p in lite0_digits.model.parameters())
    n_after = sum(p.numel() for p in model.parameters())
    assert n_after < 0.6 * n_before
    onnx_art, ort_art = export(pruned, "onnx,ort", tmp_path / "pruned", data=digits)
    for a in (onnx_art, ort_art):
        assert a.history[-1].metrics["parity"]["max_rel_error"] < 1e-4
    _, full = exported
    assert onnx_art.path.stat().st_size < 0.6 * full["onnx"].path.stat().st_size  # the export really shrank


# --------------------------------------------------------------------------- parity failures
def test_tampered_export_raises_parity_error_with_the_numbers(exported, lite0_digits, digits, tmp_path):
    import dataclasses

    import onnx
    from onnx import numpy_helper

    from exporters.parity import check_parity, parity_inputs

    _, arts = exported
    proto = onnx.load(str(arts["onnx"].path))
    conv_w = next(i for i in proto.graph.initializer if len(i.dims) == 4 and i.dims[0] > 16)
    w = numpy_helper.to_array(conv_w).copy()
    w[: w.shape[0] // 2] *= 1.5
    conv_w.CopyFrom(numpy_helper.from_array(w, conv_w.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(proto, str(bad))
    tampered = dataclasses.replace(arts["onnx"], path=bad)
    with pytest.raises(ParityError) as e:
        check_parity(lite0_digits, tampered, parity_inputs(lite0_digits, data=digits), precision="fp32")
    m = e.value.metrics
    assert m["max_rel_error"] > 1e-3 and m["samples"] == 16
    assert "max abs error" in str(e.value) and f"{m['max_abs_error']:.4g}" in str(e.value)
    assert "digits" in str(e.value)


def test_drifted_source_fails_the_export_and_writes_nothing(exported, digits, tmp_path, monkeypatch):
    """The source's outputs no longer match the file (e.g. weights edited after export): nothing is delivered."""
    import torch

    from exporters import parity
    from exporters.base import export

    _, arts = exported
    real_reference = parity.reference_outputs

    def reference_of_a_drifted_model(source, inputs):
        permute = torch.eye(10)[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
        return (torch.from_numpy(real_reference(source, inputs)) @ permute).numpy()

    monkeypatch.setattr(parity, "reference_outputs", reference_of_a_drifted_model)
    out = tmp_path / "never"
    with pytest.raises(ParityError, match=r"top-1 agreement") as e:
        export(arts["onnx"], "ort", out, data=digits)  # an ONNX source: the ORT file is checked against it
    assert e.value.metrics["top1_agreement"] < 0.5
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- TensorRT
def _settings(**kw):
    from exporters.tensorrt import BuildSettings

    base = {"onnx": "m.onnx", "engine": "m.engine", "input_name": "input", "chw": (3, 64, 64),
            "precision": "fp32", "qdq": False, "dynamic_batch": False}
    return BuildSettings(**{**base, **kw})


@pytest.mark.parametrize(("kw", "flags"), [
    ({}, ["--noTF32"]),
    ({"precision": "fp16"}, ["--fp16"]),
    ({"precision": "int8", "qdq": True}, ["--stronglyTyped"]),
    ({"precision": "fp16", "dynamic_batch": True, "max_batch": 8},
     ["--fp16", "--minShapes=input:1x3x64x64", "--optShapes=input:1x3x64x64", "--maxShapes=input:8x3x64x64"]),
])
def test_trtexec_flags_per_precision_and_profile(kw, flags):
    from exporters.tensorrt import trtexec_args

    assert trtexec_args(_settings(**kw)) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", *flags,
        "--memPoolSize=workspace:1024", "--timingCacheFile=timing.cache"]


def test_trtexec_flags_for_jetson_dla():
    from exporters.tensorrt import trtexec_args

    args = trtexec_args(_settings(precision="fp16", dla_core=1, workspace_mib=512))
    assert args[-4:] == ["--memPoolSize=workspace:512", "--timingCacheFile=timing.cache", "--useDLACore=1",
                         "--allowGPUFallback"]
    assert trtexec_args(_settings(precision="int8", qdq=True), strongly_typed=False)[3] == "--int8"


def _fake_trtexec(tmp_path: Path, *, strongly_typed: bool) -> Path:
    """A stand-in trtexec that records its arguments (and whether its --help lists --stronglyTyped)."""
    fake = tmp_path / "trtexec"
    help_text = "--stronglyTyped  Create a strongly typed network" if strongly_typed else "--int8  Enable int8"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = --help ]; then echo "{help_text}"; exit 0; fi\n'
                    f'printf "%s\\n" "$@" > "{tmp_path}/args.txt"\n')
    fake.chmod(0o755)
    return fake


def test_tensorrt_bundle_build_script_runs_trtexec_with_exact_flags(exported, tmp_path):
    from edgetl.models import SIDECAR_SUFFIX
    from exporters.tensorrt import export_tensorrt

    _, arts = exported
    bundle = export_tensorrt(arts["onnx"], tmp_path / "lite0_tensorrt", precision="fp16", build=False)
    assert bundle.format is Format.TENSORRT_BUNDLE
    names = {p.name for p in bundle.path.iterdir()}
    assert {"lite0.onnx", "build.sh", "README.md", "lite0.onnx" + SIDECAR_SUFFIX,
            "lite0.engine" + SIDECAR_SUFFIX} <= names or {"build.sh", "README.md"} <= names
    fake = _fake_trtexec(tmp_path, strongly_typed=True)
    r = subprocess.run(["bash", str(bundle.path / "build.sh")], env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "args.txt").read_text().split() == [
        "--onnx=lite0.onnx", "--saveEngine=lite0.engine", "--fp16", "--memPoolSize=workspace:1024",
        "--timingCacheFile=timing.cache"]
    assert "./build.sh" in (bundle.path / "README.md").read_text()


@pytest.fixture(scope="session")
def qdq_onnx(exported, lite0_digits, digits, tmp_path_factory):
    """An explicitly quantized (QDQ, U8S8) copy of the exported ONNX, calibrated on real digits.

    Only the classifier (Gemm) is quantized: what matters here is that the file is Q/DQ; whole-network PTQ of
    this 32x32 model is the quantization stage's problem (ORT U8S8 on every conv agreed on 6/16 top-1 here).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgetl.data import prepare

    _, arts = exported
    batches = [{"input": prepare(digits.train.images[i : i + 1], lite0_digits.input_spec).numpy()}
               for i in range(32)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("qdq") / "lite0_int8.onnx"
    quantize_static(str(arts["onnx"].path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Gemm"])
    import dataclasses

    return dataclasses.replace(arts["onnx"], path=out)


def test_tensorrt_bundle_of_a_qdq_model_is_strongly_typed_int8(qdq_onnx, lite0_digits, digits, tmp_path):
    from exporters.parity import check_parity, parity_inputs
    from exporters.tensorrt import export_tensorrt

    bundle = export_tensorrt(qdq_onnx, tmp_path / "q_tensorrt", build=False)
    assert bundle.history[-1].options["precision"] == "int8" and bundle.history[-1].options["qdq"] is True
    script = (bundle.path / "build.sh").read_text()
    for strongly_typed, want in ((True, "--stronglyTyped"), (False, "--int8")):
        fake = _fake_trtexec(tmp_path, strongly_typed=strongly_typed)
        r = subprocess.run(["bash", str(bundle.path / "build.sh")], env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "args.txt").read_text().split() == [
            "--onnx=q.onnx", "--saveEngine=q.engine", want, "--memPoolSize=workspace:1024",
            "--timingCacheFile=timing.cache"], script
    # The bundle's ONNX runs here (onnxruntime, int8 Q/DQ): judged by the int8 thresholds.
    m = check_parity(lite0_digits, bundle, parity_inputs(lite0_digits, data=digits), precision="int8")
    assert m["precision"] == "int8" and m["checked_file"] == "q.onnx" and m["top1_agreement"] >= 0.85
    assert 0 < m["max_abs_error"]  # it really ran the quantized graph


def test_tensorrt_refuses_settings_that_would_build_a_wrong_engine(exported, qdq_onnx, tmp_path):
    from exporters.tensorrt import export_tensorrt

    _, arts = exported
    with pytest.raises(ConfigError, match="explicitly quantized"):
        export_tensorrt(arts["onnx"], tmp_path / "a_tensorrt", precision="int8", build=False)
    with pytest.raises(ConfigError, match="its precision is int8"):
        export_tensorrt(qdq_onnx, tmp_path / "b_tensorrt", precision="fp16", build=False)
    with pytest.raises(ConfigError, match="DLA runs fp16 or int8"):
        export_tensorrt(arts["onnx"], tmp_path / "c_tensorrt", dla_core=0, build=False)
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        export_tensorrt(arts["onnx"], tmp_path / "d_tensorrt", dynamic_batch=True, build=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.tensorrt
def test_tensorrt_engine_builds_and_matches(exported, lite0_digits, digits, tmp_path):
    from exporters.tensorrt import export_tensorrt, tensorrt_available

    if not tensorrt_available():
        pytest.skip("needs TensorRT and a CUDA GPU")
    from exporters.parity import check_parity, parity_inputs

    _, arts = exported
    engine = export_tensorrt(arts["onnx"], tmp_path / "lite0_tensorrt", precision="fp16")
    assert engine.format is Format.TENSORRT and engine.path.stat().st_size > 0
    assert engine.extra["gpu"] and engine.extra["tensorrt"]
    assert (tmp_path / "lite0_tensorrt" / "timing.cache").stat().st_size > 0
    m = check_parity(lite0_digits, engine, parity_inputs(lite0_digits, data=digits), precision="fp16")
    assert m["runtime"] == "tensorrt" and m["top1_agreement"] >= 0.95


# --------------------------------------------------------------------------- the table and bad input
def test_format_table_validates_names_options_and_precisions(lite0_digits):
    from exporters.base import ExportOptions, plan_export

    with pytest.raises(UnknownNameError, match="did you mean 'onnx'"):
        plan_export(lite0_digits, "onx", ExportOptions())
    with pytest.raises(ConfigError, match=r"--opset does not apply to openvino, executorch; it applies to: onnx"):
        plan_export(lite0_digits, "openvino,executorch", ExportOptions(opset=17))
    plan_export(lite0_digits, "onnx,openvino", ExportOptions(opset=17))  # --opset shapes the ONNX: fine
    with pytest.raises(ConfigError, match="openvino cannot produce int8"):
        plan_export(lite0_digits, "openvino", ExportOptions(precision="int8"))
    with pytest.raises(UnknownNameError, match="did you mean 'dynamic_batch'"):
        ExportOptions.from_mapping({"dynamic_bach": True})


def test_missing_backend_names_the_extra(lite0_digits, monkeypatch):
    import importlib.util

    from exporters.base import ExportOptions, plan_export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgetl\[mobile\]'"):
        plan_export(lite0_digits, "onnx,executorch", ExportOptions())


class _SvdHead:
    @staticmethod
    def artifact() -> Artifact:
        import torch
        import torch.nn as nn

        class Singular(nn.Module):
            def forward(self, x):
                return torch.linalg.svd(x.flatten(2))[1].flatten(1)

        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Singular()), nn.Linear(4, 2)).eval()
        return Artifact(format=Format.TORCH, model=model, input_spec=InputSpec(shape=(3, 8, 8)), labels=("a", "b"))


def test_unconvertible_op_is_named_with_its_module_path(tmp_path):
    from exporters.onnx import export_onnx

    with pytest.raises(ExportError, match=r"aten::_?linalg_svd .*in module 1\.1"):
        export_onnx(_SvdHead.artifact(), tmp_path / "svd.onnx")
    assert not any(tmp_path.iterdir())


def test_importing_exporters_imports_no_backend():
    code = ("import sys, exporters, exporters.base, exporters.onnx, exporters.openvino, exporters.ort, "
            "exporters.executorch, exporters.tensorrt, exporters.parity\n"
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'executorch', 'tensorrt', 'onnxslim')"
            " if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_onnx_falls_back_to_torchscript_with_the_reason_recorded(lite0_digits, digits, tmp_path, caplog):
    """dynamo keeps its own opset 18 when it cannot convert down (Pad has no 18->17 adapter): use TorchScript."""
    import onnx

    from exporters.onnx import export_onnx
    from exporters.parity import check_parity, parity_inputs

    art = export_onnx(lite0_digits, tmp_path / "m17.onnx", opset=17)
    assert art.extra["onnx_exporter"] == "torchscript" and "opset 18" in art.extra["onnx_exporter_fallback"]
    assert "falling back to the TorchScript exporter" in caplog.text
    proto = onnx.load(str(art.path))
    assert next(o.version for o in proto.opset_import if o.domain == "") == 17
    assert "GlobalAveragePool" in {n.op_type for n in proto.graph.node}
    m = check_parity(lite0_digits, art, parity_inputs(lite0_digits, data=digits))
    assert m["max_rel_error"] < 1e-4
