"""``edgetl profile``: per-operator times from each runtime's own profiler on the digits-trained Lite0, mapped
back to its modules; the CLI (table, JSON, chart, bad input); over SSH on the loopback board; trtexec's
profile format (parser only: no TensorRT here).

The sum check: per-operator times (means over the profiled calls) must add up to the runtime's own profiled
total within the tolerance each profile states (``LayerProfile.sum_tolerance``).
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from bench_exports import export_onnx, export_openvino
from conftest import run_cli_here
from test_bench_remote import REMOTE_EDGETL, Sshd

from benchmarks.op_names import OpNameMapper, module_from_path
from benchmarks.profiler import LayerProfile, parse_trtexec_profile, profile_artifact
from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.errors import ConfigError


@pytest.fixture(scope="module")
def exports(lite0_digits, tmp_path_factory):
    d = tmp_path_factory.mktemp("profile_exports")
    return {"onnx": export_onnx(lite0_digits, d), "openvino": export_openvino(lite0_digits, d / "ov")}


def _modules(art) -> set[str]:
    return {n for n, _ in art.model.named_modules() if n}


LAYER_SUFFIXES = ("_expand_conv", "_project_conv", "_depthwise_conv")


def _check(prof: LayerProfile, modules: set[str], *, mapped_share: float, layers=LAYER_SUFFIXES) -> None:
    assert prof.ops and prof.total_ms > 0
    assert abs(prof.ops_sum_ms - prof.total_ms) <= prof.sum_tolerance * prof.total_ms, (
        prof.ops_sum_ms, prof.total_ms, prof.sum_tolerance)
    mapped = [o for o in prof.ops if o.module]
    assert all(o.module in modules for o in mapped), {o.module for o in mapped} - modules
    assert sum(o.ms for o in mapped) >= mapped_share * prof.ops_sum_ms
    convs = {n for n in modules if n.endswith(layers)}
    assert len({o.module for o in mapped} & convs) >= 10  # the layers show up under their own names
    assert prof.plain_p50_ms > 0 and prof.profiled_p50_ms > 0 and math.isfinite(prof.inflation)
    assert LayerProfile.from_dict(json.loads(json.dumps(prof.to_dict()))).to_dict() == prof.to_dict()


def test_onnxruntime_profile_sums_to_its_total_and_maps_to_modules(exports, lite0_digits):
    from edgetl.models import load_model

    prof = profile_artifact(load_model(str(exports["onnx"])), threads=1, calls=20, source=lite0_digits)
    assert prof.runtime == "onnxruntime" and prof.sum_tolerance == 0.35
    _check(prof, _modules(lite0_digits), mapped_share=0.9)
    assert {o.op_type for o in prof.ops} >= {"Conv"}


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_openvino_profile_sums_to_its_total_and_maps_to_modules(exports, lite0_digits, fmt):
    from edgetl.models import load_model

    prof = profile_artifact(load_model(str(exports[fmt])), runtime="openvino", threads=1, calls=40,
                            source=lite0_digits)
    assert prof.runtime == "openvino"
    # An IR converted from the module has folded each BN into its convolution already (the node is named
    # after the BN's Multiply): the names OpenVINO keeps (runtime model rt_info) are the BN modules'
    layers = LAYER_SUFFIXES + ("_bn0", "_bn1", "_bn2") if fmt == "openvino" else LAYER_SUFFIXES
    _check(prof, _modules(lite0_digits), mapped_share=0.6, layers=layers)


def test_torch_profile_sums_to_its_total_and_maps_to_modules(lite0_digits):
    prof = profile_artifact(lite0_digits, threads=1, calls=10, rounds=2)
    assert prof.runtime == "torch"
    _check(prof, _modules(lite0_digits), mapped_share=0.5)
    assert any(o.name == "(model body)" for o in prof.ops)


def test_dynamo_exported_onnx_maps_through_node_metadata(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    f = tmp_path / "dyn.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(f), dynamo=True)
    names = {n for n, _ in net.named_modules() if n}
    mapper = OpNameMapper.from_onnx(f, module_names=names)
    import onnx

    nodes = [n.name for n in onnx.load(str(f)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert nodes and not any("/" in n for n in nodes)  # dynamo names carry no path; metadata must be read
    assert {mapper.module(n) for n in nodes} == {"0", "2.0", "5"}
    art = Artifact(format=Format.ONNX, path=f, input_spec=InputSpec(shape=(3, 16, 16)), labels=("a", "b", "c", "d"))
    prof = profile_artifact(art, threads=1, calls=10, source=Artifact(format=Format.TORCH, model=net,
                                                                      input_spec=art.input_spec, labels=art.labels))
    assert {"0", "2.0"} <= {o.module for o in prof.ops}


def test_operator_names_map_to_module_paths():
    assert module_from_path("/_blocks.0/_depthwise_conv/Conv") == "_blocks.0._depthwise_conv"
    assert module_from_path("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert module_from_path("__module.features.3.conv/aten::_convolution/Convolution") == "features.3.conv"
    assert module_from_path("Multiply_1234") is None
    m = OpNameMapper({"/_conv_stem/Conv": "_conv_stem"}, module_names={"_conv_stem", "_bn0"})
    assert m.module("/_conv_stem/Conv_output_0_nchwc") == "_conv_stem"  # ORT's re-laid-out node
    assert m.module("/_conv_stem/Conv/WithoutBiases") == "_conv_stem"  # OpenVINO's friendly name
    assert m.module("input_abcd_acdb_/_conv_stem/Conv/WithoutBiases") == "_conv_stem"  # a reorder feeding it
    assert m.module("/not_a_module/Conv") is None  # names that exist nowhere in the model are not invented


def test_executorch_profile_from_etdump_or_a_clear_refusal(tmp_path):
    pytest.importorskip("executorch")  # the mobile extra is part of the test environment
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    # big enough (a few ms) that the method's fixed per-call work stays inside the stated tolerance
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    ep = torch.export.export(net, (torch.zeros(1, 3, 64, 64),))
    f = tmp_path / "m.pte"
    f.write_bytes(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    art = Artifact(format=Format.EXECUTORCH, path=f, input_spec=InputSpec(shape=(3, 64, 64)),
                   labels=tuple(str(i) for i in range(10)))
    try:
        prof = profile_artifact(art, threads=1, calls=10)
    except ConfigError as e:
        assert "not supported by this executorch build" in str(e)
        return
    assert prof.runtime == "executorch" and len(prof.ops) >= 3
    assert any("Convolution" in o.name for o in prof.ops)
    assert abs(prof.ops_sum_ms - prof.total_ms) <= prof.sum_tolerance * prof.total_ms
    assert any("ETRecord" in n for n in prof.notes)


# trtexec --exportProfile / --exportLayerInfo, written from trtexec's documented JSON format (TensorRT is not
# installable here: only the parser is tested, not a real trtexec run).
TRT_PROFILE = [
    {"count": 200},
    {"name": "/features/features.0/features.0.0/Conv + /features/features.0/features.0.2/Clip", "timeMs": 40.0,
     "averageMs": 0.2, "medianMs": 0.19, "percentage": 50.0},
    {"name": "/features/features.1/conv/conv.0/conv.0.0/Conv", "timeMs": 30.0, "averageMs": 0.15,
     "medianMs": 0.15, "percentage": 37.5},
    {"name": "Reformatting CopyNode for Input Tensor 0 to /classifier/classifier.1/Gemm", "timeMs": 10.0,
     "averageMs": 0.05, "medianMs": 0.05, "percentage": 12.5},
]
TRT_LAYERS = {"Layers": [
    {"Name": TRT_PROFILE[1]["name"], "LayerType": "CaskConvolution",
     "Metadata": "[ONNX Layer: /features/features.0/features.0.0/Conv][ONNX Layer: /features/features.0/features.0.2/Clip]"},
    {"Name": TRT_PROFILE[2]["name"], "LayerType": "CaskConvolution",
     "Metadata": "[ONNX Layer: /features/features.1/conv/conv.0/conv.0.0/Conv]"},
], "Bindings": ["input", "logits"]}


def test_trtexec_profile_parser_reads_the_documented_format():
    prof = parse_trtexec_profile(TRT_PROFILE, TRT_LAYERS, artifact="m.engine")
    assert prof.calls == 200 and prof.runtime == "trtexec"
    assert prof.total_ms == pytest.approx(0.4) and prof.ops_sum_ms == pytest.approx(0.4)
    mods = {o.name: o.module for o in prof.ops}
    assert mods[TRT_PROFILE[1]["name"]] == "features.0.0"
    assert mods[TRT_PROFILE[2]["name"]] == "features.1.conv.0.0"
    assert prof.ops[0].op_type == "CaskConvolution"
    with pytest.raises(ConfigError, match="count"):
        parse_trtexec_profile([{"name": "x"}])


# --------------------------------------------------------------------------- CLI
def test_cli_profile_writes_json_and_chart(exports, tmp_path):
    out = tmp_path / "p.json"
    r = run_cli_here("profile", str(exports["onnx"]), "--threads", "1", "--calls", "10", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    prof = payload["profile"]
    assert prof["runtime"] == "onnxruntime" and prof["by_module"] and prof["inflation"] > 0
    assert json.loads(out.read_text())["ops"] == prof["ops"]
    assert Path(payload["chart"]).read_bytes()[:4] == b"\x89PNG"
    again = run_cli_here("profile", str(exports["onnx"]), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    missing = run_cli_here("profile", str(tmp_path / "none.onnx"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    bad = run_cli_here("profile", str(exports["onnx"]), "--runtime", "litert", "-o", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "profiling runs on" in bad.stderr and not (tmp_path / "x.json").exists()


@pytest.fixture()
def sshd(tmp_path):
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.fail("sshd is missing: `make test` installs openssh-server")
    d = Sshd(tmp_path / "sshd")
    yield d
    d.stop()


@pytest.mark.slow
def test_profile_over_ssh_on_the_loopback_board(sshd, exports, tmp_path):
    out = tmp_path / "remote.json"
    # the board's edgetl is this checkout's (ssh passes no PYTHONPATH, so name it in the remote command)
    remote = f"env PYTHONPATH={shlex.quote(str(Path(__file__).resolve().parent.parent))} {REMOTE_EDGETL}"
    r = run_cli_here("profile", str(exports["openvino"]), "--host", "board", "--ssh-config", str(sshd.config),
                     "--remote-edgetl", remote, "--threads", "1", "--calls", "10", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)["profile"]
    assert prof["host"] == "board" and prof["runtime"] == "openvino"
    assert abs(prof["ops_sum_ms"] - prof["total_ms"]) <= prof["sum_tolerance"] * prof["total_ms"]
    assert sum(o["ms"] for o in prof["ops"] if o["module"]) >= 0.6 * prof["ops_sum_ms"]
    assert json.loads(out.read_text())["host"] == "board" and out.with_suffix(".png").exists()


# A stand-in trtexec for a TensorRT board without edgetl: writes the sample profile and layer info in trtexec's
# documented formats to the --exportProfile / --exportLayerInfo paths it is given.
FAKE_TRTEXEC = r'''
import json, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
assert "--dumpProfile" in sys.argv and args["profilingVerbosity"] == "detailed", sys.argv
json.dump(PROFILE, open(args["exportProfile"], "w"))
json.dump(LAYERS, open(args["exportLayerInfo"], "w"))
print("[I] TensorRT version: 10.3.0")
'''


@pytest.mark.slow
def test_profile_over_ssh_on_a_trtexec_board(sshd, tmp_path):
    fake = tmp_path / "trtexec"
    fake.write_text("#!" + __import__("sys").executable + f"\nPROFILE = {TRT_PROFILE!r}\nLAYERS = {TRT_LAYERS!r}\n"
                    + FAKE_TRTEXEC)
    fake.chmod(0o755)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine; the stand-in trtexec does not read it")
    profile = tmp_path / "board.yaml"
    profile.write_text(f"name: board-trt\naccelerator: gpu\nformats: [tensorrt]\nruntimes: [tensorrt]\n"
                       f"connection: {{method: ssh, trtexec: {fake}}}\n")
    out = tmp_path / "trt.json"
    r = run_cli_here("profile", str(engine), "--device", str(profile), "--host", "board", "--ssh-config",
                     str(sshd.config), "--calls", "200", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)["profile"]
    assert prof["runtime"] == "trtexec" and prof["host"] == "board" and prof["calls"] == 200
    assert {o["module"] for o in prof["ops"]} >= {"features.0.0", "features.1.conv.0.0"}
