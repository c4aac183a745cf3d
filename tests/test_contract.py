"""The model contract: flags, readers on real files of several model shapes, merge/check refusals, and the
dynamic-shape specs each exporter takes (used here with torch.onnx / torch.export / OpenVINO directly)."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch

from edgetl.contract import (
    InputTensor,
    ModelContract,
    OutputTensor,
    Role,
    Task,
    merge,
    parse_flags,
    parse_output_flag,
    parse_shape,
    parse_shape_flag,
)
from edgetl.contract_merge import require
from edgetl.contract_read import METADATA_KEY, contract_to_json, read_contract, read_module
from edgetl.contract_shapes import (
    check_runs,
    dynamic_dim_ranges,
    example_inputs,
    executorch_upper_bounds,
    onnx_dynamic_axes,
    openvino_partial_shapes,
    tensorrt_profiles,
    torch_dynamic_shapes,
    trtexec_shape_flags,
)
from edgetl.errors import ConfigError, DataError, UnknownNameError
from tests import shapes

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


def _vad_inputs(n: int = 1):
    return (torch.randn(n, 256), torch.zeros(2, n, 32), torch.tensor(16000))


# --------------------------------------------------------------------------- flags
def test_shapes_parse_in_every_spelling():
    assert parse_shape("1x3xHxW") == (1, 3, "H", "W")
    assert parse_shape("N,3,480,640") == ("N", 3, 480, 640)
    assert parse_shape("[?,3,-1,-1]") == ("?", 3, "?", "?")
    assert parse_shape("scalar") == () and parse_shape("()") == ()
    for bad in ("1x0x4", "1x3x4.5", "1x3x$"):
        with pytest.raises(ConfigError, match="--input"):
            parse_shape(bad)


def test_input_flag_names_dtypes_and_colons_in_names():
    f = parse_shape_flag("image:1x3xHxW")
    assert (f.name, f.shape, f.dtype) == ("image", (1, 3, "H", "W"), None)
    f = parse_shape_flag("1x3x48x48")
    assert f.name is None and f.shape == (1, 3, 48, 48)
    f = parse_shape_flag("1x3x48x48:fp16")
    assert f.name is None and f.dtype == "float16"
    f = parse_shape_flag("input_1:0:1x3x8x8:i64")  # TensorFlow-style ONNX names hold ':'
    assert (f.name, f.shape, f.dtype) == ("input_1:0", (1, 3, 8, 8), "int64")
    assert parse_shape_flag("sr:scalar:int64").shape == ()
    assert parse_output_flag(["boxes,scores", "2"]) == ("boxes", "scores", "2")
    with pytest.raises(ConfigError, match="--output"):
        parse_output_flag([","])
    with pytest.raises(ConfigError, match="--opt-shape"):
        parse_flags(opt_shapes=["image:1x3xHx64"])  # a profile is concrete sizes
    with pytest.raises(UnknownNameError, match="did you mean 'detection'"):
        parse_flags(task="detectoin")
    with pytest.raises(ConfigError, match="NAME:ROLE"):
        parse_flags(roles=["boxes"])


def test_contract_round_trips_through_json():
    c = ModelContract(
        inputs=(InputTensor("image", ("N", 3, "H", "W"), "float32", value_range=(0, 1), mean=(0.5,) * 3,
                            std=(0.2,) * 3, opt_shape=(1, 3, 64, 64)),
                InputTensor("sr", (), "int64")),
        outputs=(OutputTensor("boxes", ("N", "A", 4), role="boxes", box_format="xywh"),
                 OutputTensor("scores", ("N", "A"), role=Role.SCORES)),
        task="detection", selected=("boxes", "scores"))
    back = ModelContract.from_dict(__import__("json").loads(contract_to_json(c)))
    assert back == c
    with pytest.raises(UnknownNameError, match="did you mean 'inputs'"):
        ModelContract.from_dict({"inputz": []})


# --------------------------------------------------------------------------- readers on real files
def test_onnx_keeps_dynamic_dims_and_reads_back_recorded_roles(shape_cache, tmp_path):
    import onnx

    seg = shapes.trained("SegNet", shape_cache)
    c = ModelContract(inputs=(InputTensor("image", ("N", 1, "H", "W"), "float32"),),
                      outputs=(OutputTensor("mask", ("N", 2, "H", "W")),))
    path = tmp_path / "seg.onnx"
    torch.onnx.export(seg, (torch.rand(1, 1, 28, 28),), str(path), input_names=["image"], output_names=["mask"],
                      dynamic_axes=onnx_dynamic_axes(c), dynamo=False)
    got = read_contract(path)
    assert got.input("image").shape == ("N", 1, "H", "W") and got.input("image").dtype == "float32"
    assert got.output("mask").shape == ("N", 2, "H", "W") and got.fixed
    # an edgetl export records the full contract in the metadata; roles and task come back
    model = onnx.load(str(path))
    recorded = merge(got, parse_flags(task="segmentation", inputs=["image:Nx1xHxW"]))
    model.metadata_props.add(key=METADATA_KEY, value=contract_to_json(recorded))
    onnx.save(model, str(path))
    again = read_contract(path)
    assert again.task == Task.SEGMENTATION and again.output("mask").role == Role.MASK


def test_onnx_multi_input_state_model_and_its_refusals(shape_cache, tmp_path):
    vad = shapes.trained("VadLike", shape_cache)
    path = tmp_path / "vad.onnx"
    torch.onnx.export(vad, _vad_inputs(), str(path), input_names=["audio", "state", "sr"],
                      output_names=["prob", "new_state"], dynamic_axes={"audio": {0: "N"}, "state": {1: "N"}},
                      dynamo=False)
    file_c = read_contract(path)
    assert file_c.input_names == ("audio", "state", "sr")
    assert file_c.input("state").shape == (2, "N", 32) and file_c.input("sr").shape == ()
    assert file_c.input("sr").dtype == "int64"
    with pytest.raises(ConfigError, match=r"3 inputs \(audio, state, sr\); name the one"):
        merge(file_c, parse_flags(inputs=["1x256"]))
    with pytest.raises(UnknownNameError, match="did you mean 'state'"):
        merge(file_c, parse_flags(inputs=["stat:2x1x32"]))
    with pytest.raises(ConfigError, match=r"--input state:1x32: rank 2 but the model's input is 2xNx32"):
        merge(file_c, parse_flags(inputs=["state:1x32"]))
    with pytest.raises(ConfigError, match="dim 2 is 64 but the model fixes it at 32"):
        merge(file_c, parse_flags(inputs=["state:2x1x64"]))
    with pytest.raises(ConfigError, match="dtype float32 but the model's input 'sr' is int64"):
        merge(file_c, parse_flags(inputs=["sr:scalar:float32"]))
    with pytest.raises(ConfigError, match="one symbol is one size"):
        merge(file_c, parse_flags(opt_shapes=["audio:2x256", "state:2x3x32"]))
    with pytest.raises(ConfigError, match=r"--output 5: the model has 2 outputs"):
        merge(file_c, parse_flags(outputs=["5"]))
    c = merge(file_c, parse_flags(outputs=["0"], opt_shapes=["audio:1x256", "state:2x1x32"]))
    assert c.selected == ("prob",) and c.metric_outputs()[0].name == "prob"
    # the sample rate is an int64 scalar: never made up
    with pytest.raises(ConfigError, match="--data"):
        example_inputs(c)
    feed = example_inputs(c, data={"sr": np.array(16000)})
    assert feed["state"].shape == (2, 1, 32) and feed["sr"].dtype == np.int64
    with pytest.raises(DataError, match="dim 2 must be 32"):
        example_inputs(c, data={"sr": np.array(16000), "state": np.zeros((2, 1, 16), np.float32)})


def test_openvino_partial_shapes_with_bounds_survive(shape_cache, tmp_path):
    import openvino as ov

    seg = shapes.trained("SegNet", shape_cache)
    ovm = ov.convert_model(seg, example_input=torch.rand(1, 1, 28, 28))
    c = merge(read_contract(ovm), parse_flags(inputs=["1x1xHxW"], min_shapes=["1x1x16x16"],
                                              max_shapes=["1x1x64x96"]))
    spec = openvino_partial_shapes(c)
    assert spec == {c.input_names[0]: "[1,1,16..64,16..96]"}
    ovm.reshape({ovm.inputs[0]: ov.PartialShape(spec[c.input_names[0]])})
    ov.save_model(ovm, str(tmp_path / "seg.xml"))
    back = read_contract(tmp_path / "seg.xml")
    t = back.inputs[0]
    assert t.shape == (1, 1, "?", "?") and t.min_shape == (1, 1, 16, 16) and t.max_shape == (1, 1, 64, 96)
    assert back.outputs[0].name == "output"  # convert_model names no outputs: named by position


def test_torchscript_gives_names_and_asks_for_shapes(shape_cache, tmp_path):
    vad = shapes.trained("VadLike", shape_cache)
    ts = torch.jit.trace(vad, _vad_inputs())
    ts.save(str(tmp_path / "vad.pt"))
    file_c = read_contract(tmp_path / "vad.pt")
    assert file_c.input_names == ("audio", "state", "sr") and len(file_c.outputs) == 2
    with pytest.raises(ConfigError, match="give it with --input audio:SHAPE"):
        require(file_c)
    c = merge(file_c, parse_flags(inputs=["audio:1x256:float32", "state:2x1x32:float32", "sr:scalar:int64"]))
    require(c, dtypes=True, concrete=True)
    feed = example_inputs(c, data={"sr": np.array(16000)})
    out = check_runs(c, lambda f: ts(*(torch.from_numpy(f[n]) for n in c.input_names)), inputs=feed)
    assert out[0].shape == (1, 1) and out[1].shape == (2, 1, 32)


def test_exported_program_dims_ranges_and_named_outputs(shape_cache, tmp_path):
    seg = shapes.trained("SegNet", shape_cache)
    want = ModelContract(inputs=(InputTensor("image", ("N", 1, "H", "W"), min_shape=(1, 1, 16, 16),
                                             max_shape=(8, 1, 128, 128)),))
    ep = torch.export.export(seg, (torch.rand(2, 1, 28, 28),), dynamic_shapes=torch_dynamic_shapes(want))
    torch.export.save(ep, str(tmp_path / "seg.pt2"))
    c = read_contract(tmp_path / "seg.pt2")
    t = c.input("image")
    assert [isinstance(d, str) for d in t.shape] == [True, False, True, True] and t.shape[1] == 1
    assert t.min_shape == (1, 1, 16, 16) and t.max_shape == (8, 1, 128, 128)
    assert executorch_upper_bounds(c) == {"image": (8, 1, 128, 128)}
    assert c.outputs[0].shape[1] == 2
    static = merge(c, parse_flags(inputs=["image:1x1x32x32"]))  # the file's profiles give way to a static shape
    assert static.input("image").min_shape is None and tensorrt_profiles(static)["opt"]["image"] == (1, 1, 32, 32)
    with pytest.raises(ConfigError, match=r"dim 2 is 256 but the model accepts 16..128"):
        merge(c, parse_flags(inputs=["image:1x1x256x32"]))

    class Named(torch.nn.Module):
        Out = collections.namedtuple("Out", "boxes scores landmarks")

        def __init__(self):
            super().__init__()
            self.det = shapes.trained("FaceDetLike", shape_cache)

        def forward(self, image):
            return self.Out(*self.det(image))

    ep = torch.export.export(Named(), (torch.rand(1, 3, 32, 32),))
    assert read_contract(ep).output_names == ("boxes", "scores", "landmarks")
    plain = torch.export.export(shapes.trained("FaceDetLike", shape_cache), (torch.rand(1, 3, 32, 32),))
    assert read_contract(plain).output_names == ("output0", "output1", "output2")


def test_module_reader_names_inputs_and_outputs(shape_cache):
    vad = shapes.trained("VadLike", shape_cache)
    c = read_module(vad, _vad_inputs(3))
    assert c.input_names == ("audio", "state", "sr") and not c.fixed
    assert c.outputs[1].shape == (2, 3, 32) and c.output_names == ("output0", "output1")

    class DictOut(torch.nn.Module):
        def forward(self, x):
            return {"logits": x.mean(1), "aux": {"feat": x}}

    d = read_module(DictOut(), torch.rand(2, 4))
    assert d.output_names == ("logits", "aux.feat")
    assert merge(d, parse_flags(task="classification", outputs=["logits"])).output("logits").role == Role.LOGITS


def test_check_runs_names_the_flag_for_a_shape_the_model_rejects(shape_cache):
    ctc = shapes.trained("CtcRecognizer", shape_cache)
    file_c = read_module(ctc, torch.rand(1, 1, 8, 24))
    bad = merge(file_c, parse_flags(inputs=["image:1x1x16x24:float32"]))  # height 16: the net reads 8 rows

    def run(feed):
        return ctc(torch.from_numpy(feed["image"]))

    with pytest.raises(ConfigError, match=r"rejects the inputs image 1x1x16x24 float32 \(set by --input"):
        check_runs(bad, run)
    good = merge(file_c, parse_flags(inputs=["image:1x1x8xW:float32"], opt_shapes=["image:1x1x8x32"]))
    assert check_runs(good, run).shape == (16, 1, 11)


# --------------------------------------------------------------------------- profiles
def test_profiles_and_their_missing_facts():
    c = ModelContract(inputs=(InputTensor("image", (1, 3, "H", "W"), "float32"), InputTensor("k", (4,), "int64")))
    with pytest.raises(ConfigError, match=r"--opt-shape image:1x3xSIZExSIZE"):
        require(c, concrete=True)
    with pytest.raises(ConfigError, match="--min-shape image:1x3xSIZExSIZE"):
        tensorrt_profiles(c)
    with pytest.raises(ConfigError, match="--max-shape image"):
        executorch_upper_bounds(c)
    c = merge(c, parse_flags(min_shapes=["image:1x3x32x32"], opt_shapes=["image:1x3x320x320"],
                             max_shapes=["image:1x3x640x640"]))
    prof = tensorrt_profiles(c)
    assert prof["opt"] == {"image": (1, 3, 320, 320), "k": (4,)} and prof["max"]["image"] == (1, 3, 640, 640)
    assert trtexec_shape_flags(prof)[0] == "--minShapes=image:1x3x32x32,k:4"
    assert dynamic_dim_ranges(c) == {"H": (32, 640), "W": (32, 640)}
    assert onnx_dynamic_axes(c) == {"image": {2: "H", 3: "W"}}
    with pytest.raises(ConfigError, match="min <= opt"):
        merge(c, parse_flags(min_shapes=["image:1x3x400x400"]))
    with pytest.raises(ConfigError, match="fixes it at 3"):
        merge(c, parse_flags(opt_shapes=["image:1x1x64x64"]))


# --------------------------------------------------------------------------- round trips through files
def test_dynamo_onnx_keeps_symbol_names_and_runs_at_another_size(shape_cache, tmp_path):
    import onnxruntime as ort

    seg = shapes.trained("SegNet", shape_cache)
    want = ModelContract(inputs=(InputTensor("image", ("N", 1, "H", "W"), "float32", min_shape=(1, 1, 8, 8),
                                             max_shape=(4, 1, 256, 256)),))
    path = tmp_path / "seg.onnx"
    torch.onnx.export(seg, (torch.rand(2, 1, 28, 28),), str(path), input_names=["image"], output_names=["mask"],
                      dynamic_shapes=torch_dynamic_shapes(want), dynamo=True, verbose=False)
    got = read_contract(path)
    assert got.input("image").shape == ("N", 1, "H", "W") and got.output("mask").shape == ("N", 2, "H", "W")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    c = merge(got, parse_flags(opt_shapes=["image:3x1x40x56"]))
    out = check_runs(c, lambda feed: sess.run(None, feed))
    assert out[0].shape == (3, 2, 40, 56)
    with torch.no_grad():
        ref = seg(torch.from_numpy(example_inputs(c)["image"])).numpy()
    assert np.abs(out[0] - ref).max() < 1e-4


def test_recorded_contract_round_trips_through_openvino_and_torchscript(shape_cache, tmp_path):
    import openvino as ov

    from edgetl.contract_read import embed_openvino, torchscript_extra_files

    det = shapes.trained("FaceDetLike", shape_cache)
    flags = parse_flags(task="detection", roles=["output0:boxes:N,A,4:xyxy", "output1:scores", "output2:other"],
                        outputs=["0", "1"])
    c = merge(read_module(det, torch.rand(1, 3, 32, 32)), flags)
    ovm = ov.convert_model(det, example_input=torch.rand(1, 3, 32, 32))
    ov.save_model(embed_openvino(ovm, c), str(tmp_path / "det.xml"), compress_to_fp16=False)
    back = read_contract(tmp_path / "det.xml")
    assert back.task == Task.DETECTION and back.selected == ("output0", "output1")
    assert back.output("output0").box_format == "xyxy" and back.output("output1").role == Role.SCORES
    assert back.input_names == c.input_names and back.fixed  # the graph's shapes, not the module's observation
    ts = torch.jit.trace(det, torch.rand(1, 3, 32, 32))
    torch.jit.save(ts, str(tmp_path / "det.pt"), _extra_files=torchscript_extra_files(c))
    tsc = read_contract(tmp_path / "det.pt")
    assert tsc.task == Task.DETECTION and tsc.output("output0").role == Role.BOXES
    assert tsc.input("image").shape == (1, 3, 32, 32)  # shapes the module recorded fill what TorchScript lacks


def test_legacy_input_spec_becomes_a_classification_contract():
    from edgetl.artifact import InputSpec
    from edgetl.contract_read import from_input_spec

    c = from_input_spec(InputSpec(shape=(3, 32, 32)), [str(i) for i in range(10)])
    assert c.task == Task.CLASSIFICATION and c.outputs[0].role == Role.LOGITS
    x = example_inputs(c)["input"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    # values in [0, 1], then the ImageNet mean/std per channel: what the model was trained on
    for ch, (m, s) in enumerate(zip(InputSpec(shape=(3, 8, 8)).mean, InputSpec(shape=(3, 8, 8)).std, strict=True)):
        assert -m / s - 1e-5 <= x[0, ch].min() and x[0, ch].max() <= (1 - m) / s + 1e-5
    assert x.min() < 0


def test_read_contract_refuses_what_it_cannot_read(tmp_path):
    from edgetl.errors import InputFileError

    with pytest.raises(InputFileError, match="not found"):
        read_contract(tmp_path / "missing.onnx")
    torch.save({"w": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(InputFileError, match="read the module"):
        read_contract(tmp_path / "sd.pt")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="not a readable ONNX"):
        read_contract(tmp_path / "bad.onnx")
    with pytest.raises(ConfigError, match="example inputs"):
        read_contract(torch.nn.Linear(2, 2))


def test_resolve_contract_of_a_module_from_flags_alone(shape_cache):
    from edgetl.contract_read import from_input_spec, resolve_contract

    vad = shapes.trained("VadLike", shape_cache)
    flags = parse_flags(inputs=["audio:Nx256:float32", "state:2xNx32:float32", "sr:scalar:int64"],
                        opt_shapes=["audio:1x256", "state:2x1x32"], roles=["1:state"], outputs=["0"])
    with pytest.raises(ConfigError, match="--data"):
        resolve_contract(vad, flags)  # the sample rate must be real
    c = resolve_contract(vad, flags, data={"sr": np.array(16000)})
    assert c.input("state").shape == (2, "N", 32) and c.output("output1").role == Role.STATE
    assert c.selected == ("output0",) and c.output("output0").shape == (1, 1)
    with pytest.raises(UnknownNameError, match="did you mean 'audio'"):
        resolve_contract(vad, parse_flags(inputs=["audoi:1x256"]))

    seg = shapes.trained("SegNet", shape_cache)
    c = resolve_contract(seg, parse_flags(inputs=["1x1xHxW:float32"], opt_shapes=["1x1x28x28"], task="segmentation"))
    assert c.input_names == ("image",) and c.input("image").shape == (1, 1, "H", "W")
    assert c.output("output").role == Role.MASK and c.output("output").shape == (1, 2, 28, 28)
    with pytest.raises(ConfigError, match=r"give it with --input image:SHAPE"):
        resolve_contract(seg)  # no guessing 3x224x224

    ctc = shapes.trained("CtcRecognizer", shape_cache)
    with pytest.raises(ConfigError, match="rejects the inputs image 1x1x16x24"):
        resolve_contract(ctc, parse_flags(inputs=["1x1x16x24:float32"]))

    from edgetl.artifact import InputSpec

    base = merge(from_input_spec(InputSpec(shape=(1, 28, 28), mean=(0.5,), std=(0.5,)), shapes.WORDS),
                 parse_flags(roles=["output:logits:N,C"]))
    c = resolve_contract(shapes.trained("PooledClassifier", shape_cache), base=base)
    assert c.input_names == ("image",) and c.task == Task.CLASSIFICATION and c.output("output").layout == "N,C"


def test_contract_inside_the_artifact_metadata_and_the_sidecar_is_read_back(shape_cache, tmp_path):
    import json

    import onnx

    seg = shapes.trained("SegNet", shape_cache)
    path = tmp_path / "seg.onnx"
    torch.onnx.export(seg, (torch.rand(1, 1, 28, 28),), str(path), input_names=["image"], output_names=["mask"],
                      dynamo=False)
    c = merge(read_contract(path), parse_flags(task="segmentation"))
    model = onnx.load(str(path))
    model.metadata_props.add(key="edgetl", value=json.dumps({"format": "onnx", "contract": c.to_dict()}))
    onnx.save(model, str(path))
    assert read_contract(path).output("mask").role == Role.MASK
    ep = torch.export.export(seg, (torch.rand(1, 1, 28, 28),))
    torch.export.save(ep, str(tmp_path / "seg.pt2"))
    assert read_contract(tmp_path / "seg.pt2").task == Task.GENERIC
    recorded = merge(read_contract(tmp_path / "seg.pt2"), parse_flags(task="segmentation"))
    (tmp_path / "seg.pt2.edgetl.json").write_text(json.dumps({"contract": recorded.to_dict()}))
    back = read_contract(tmp_path / "seg.pt2")
    assert back.task == Task.SEGMENTATION and back.outputs[0].role == Role.MASK


@pytest.mark.slow
def test_executorch_plans_for_the_contracts_upper_bounds(shape_cache):
    import executorch  # noqa: F401  (part of the test install: missing is a failure, not a skip)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    seg = shapes.trained("SegNet", shape_cache)
    c = merge(ModelContract(inputs=(InputTensor("image", (1, 1, "H", "W"), "float32"),)),
              parse_flags(min_shapes=["image:1x1x8x8"], max_shapes=["image:1x1x64x64"]))
    assert executorch_upper_bounds(c) == {"image": (1, 1, 64, 64)}
    ep = torch.export.export(seg, (torch.rand(1, 1, 28, 28),), dynamic_shapes=torch_dynamic_shapes(c))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    x = torch.rand(1, 1, 40, 56)  # a size never traced, inside the bounds
    with torch.no_grad():
        assert (method.execute([x])[0] - seg(x)).abs().max() < 1e-4
    with pytest.raises(RuntimeError):  # beyond the planned 64x64: refused, not overrun
        method.execute([torch.rand(1, 1, 80, 80)])


def test_a_static_file_refuses_dynamic_dims_and_unknown_outputs(shape_cache, tmp_path):
    det = shapes.trained("FaceDetLike", shape_cache)
    path = tmp_path / "det.onnx"
    torch.onnx.export(det, (torch.rand(1, 3, 32, 32),), str(path), input_names=["image"],
                      output_names=["boxes", "scores", "landmarks"], dynamo=False)
    file_c = read_contract(path)
    assert file_c.input("image").shape == (1, 3, 32, 32) and file_c.output("boxes").shape == (1, 16, 4)
    # outputs named after roles get them; the third is left as it is
    c = merge(file_c, parse_flags(task="detection"))
    assert (c.output("boxes").role, c.output("scores").role, c.output("landmarks").role) == \
        (Role.BOXES, Role.SCORES, Role.OTHER)
    with pytest.raises(ConfigError, match=r"dim 2 is dynamic \(H\) but the model fixes it at 32"):
        merge(file_c, parse_flags(inputs=["1x3xHxW"]))
    with pytest.raises(UnknownNameError, match="did you mean 'landmarks'"):
        merge(file_c, parse_flags(roles=["landmark:other"]))
    with pytest.raises(UnknownNameError, match="did you mean 'scores'"):
        merge(file_c, parse_flags(outputs=["score"]))
    assert tensorrt_profiles(c)["max"] == {"image": (1, 3, 32, 32)}
    assert openvino_partial_shapes(c) == {"image": "[1,3,32,32]"} and onnx_dynamic_axes(c) == {}


def test_a_contract_refuses_impossible_facts():
    for kw, msg in ((dict(shape=(1, 0, 4)), "positive size"), (dict(value_range=(1.0, 0.0)), "low < high"),
                    (dict(std=(0.0,)), "positive")):
        with pytest.raises(ConfigError, match=msg):
            InputTensor("x", **kw)
    with pytest.raises(UnknownNameError, match="dtype"):
        InputTensor("x", dtype="float33")
    with pytest.raises(ConfigError, match="names two inputs alike"):
        ModelContract(inputs=(InputTensor("x"), InputTensor("x")))
    with pytest.raises(UnknownNameError, match="in --output"):
        ModelContract(inputs=(InputTensor("x"),), outputs=(OutputTensor("y"),), selected=("z",))
