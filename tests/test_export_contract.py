"""Export by the contract with bounded dynamic shapes: ``--min-shape``/``--max-shape`` reach the ExecuTorch program
(one ``torch.export.Dim(name, min=, max=)`` per symbol) and the TensorRT build bundle (trtexec's
``--minShapes/--optShapes/--maxShapes`` per named input, the Python builder's optimization profile).

The model is :class:`tests.shapes.SegNet` (fully convolutional, any H x W), trained briefly (cached), as a state dict
of ``--arch tests.shapes:SegNet``; the inputs are MNIST digits from a wheel, resized for the second resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import shapes
from tests.cli_checks import ok_json, refused
from tests.conftest import run_cli_here

ARCH = ("--arch", "tests.shapes:SegNet")
BOUNDS = ("--input", "image:1x1xHxW:float32", "--opt-shape", "image:1x1x28x28", "--min-shape", "image:1x1x16x16",
          "--max-shape", "image:1x1x64x64")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    d = tmp_path_factory.mktemp("segbounds")
    model = shapes.trained("SegNet", tmp_path_factory.getbasetemp().parent / "edgetl-fixtures")
    torch.save(model.state_dict(), d / "seg.pth")
    x = shapes.mnist(None)[0][4000:4008]
    np.savez(d / "seg28.npz", image=x)
    for h, w in ((40, 56), (72, 72)):
        np.savez(d / f"seg{h}x{w}.npz", image=torch.nn.functional.interpolate(torch.from_numpy(x), size=(h, w)).numpy())
    return d


@pytest.fixture(scope="module")
def pte(seg):
    import executorch  # noqa: F401  (part of the test install: missing is a failure, not a skip)
    r = ok_json(run_cli_here("export", str(seg / "seg.pth"), *ARCH, "--format", "executorch", "-o", str(seg / "out"),
                        *BOUNDS, "--task", "segmentation", "--data", str(seg / "seg28.npz"), "--json"))
    return r


def test_executorch_export_bounds_dynamic_hw_from_the_contract_and_runs_inside_them(seg, pte):
    row = pte["exports"][0]
    p = row["parity"]
    assert p["checked"] and p["runtime"] == "executorch" and p["samples"] == 8
    assert p["headline"]["metric"] == "miou" and p["headline"]["value"] == 1.0 and p["max_rel_error"] < 1e-4
    path = Path(row["path"])
    side = json.loads(path.with_name(path.name + ".edgetl.json").read_text())
    (inp,), (out,) = side["contract"]["inputs"], side["contract"]["outputs"]
    assert inp["shape"] == [1, 1, "H", "W"] and inp["min_shape"] == [1, 1, 16, 16] and inp["max_shape"] == [1, 1, 64, 64]
    assert out["shape"] == [1, 2, "H", "W"]  # the mask follows the input's H x W, as the program computes it
    assert side["extra"]["dynamic_dims"] == {"H": [16, 64], "W": [16, 64]}
    # a second H x W inside the bounds runs in the ExecuTorch runtime, faithful to the PyTorch source
    e = ok_json(run_cli_here("eval", str(path), "--data", str(seg / "seg40x56.npz"), "--reference", str(seg / "seg.pth"),
                        *ARCH, "--json"))
    assert e["output_shapes"]["output"] == [1, 2, 40, 56] and e["samples"] == 8
    assert e["headline"]["value"] == 1.0 and e["fidelity"]["outputs"][0]["max_rel"] < 1e-4


def test_a_shape_past_the_exported_bounds_is_one_line_at_eval_and_bench(seg, pte):
    path = pte["exports"][0]["path"]
    refused(run_cli_here("eval", path, "--data", str(seg / "seg72x72.npz"), "--reference", str(seg / "seg.pth"), *ARCH),
            "(1, 1, 72, 72)", "16..64", "--max-shape")
    refused(run_cli_here("bench", path, "--data", str(seg / "seg72x72.npz")), "16..64", "--max-shape")
    refused(run_cli_here("bench", path, "--opt-shape", "image:1x1x72x72"), "opt <= max")


def test_executorch_export_without_an_upper_bound_names_the_flag(seg, tmp_path):
    import executorch  # noqa: F401  (part of the test install: missing is a failure, not a skip)
    r = run_cli_here("export", str(seg / "seg.pth"), *ARCH, "--format", "executorch", "-o", str(tmp_path / "out"),
                "--input", "image:1x1xHxW:float32", "--opt-shape", "image:1x1x28x28", "--no-parity")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--max-shape image:1x1xSIZExSIZE" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- TensorRT: one profile per named input
@pytest.fixture(scope="module")
def vad_onnx(tmp_path_factory):
    from tests.cli_checks import onnx_of

    d = tmp_path_factory.mktemp("trtvad")
    torch.manual_seed(0)
    return onnx_of(shapes.VadLike().eval(), (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000)),
                   d / "vad.onnx", inputs=["audio", "state", "sr"], outputs=["prob", "new_state"],
                   dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})


PROFILE = ("--min-shape", "audio:1x256", "--opt-shape", "audio:2x256", "--max-shape", "audio:8x256",
           "--min-shape", "state:2x1x32", "--opt-shape", "state:2x2x32", "--max-shape", "state:2x8x32")


def test_tensorrt_bundle_of_a_three_input_model_holds_the_profile_per_named_input(vad_onnx, tmp_path):
    import subprocess

    out = tmp_path / "out"
    r = ok_json(run_cli_here("export", str(vad_onnx), "--format", "tensorrt", "-o", str(out), *PROFILE, "--no-parity",
                        "--json"))
    bundle = Path(r["exports"][0]["path"])
    assert r["exports"][0]["artifact_format"] == "tensorrt-bundle"
    fake = tmp_path / "trtexec"  # records the arguments build.sh gives it (TensorRT is not installed here)
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path}/args.txt"\n')
    fake.chmod(0o755)
    run = subprocess.run(["bash", str(bundle / "build.sh")], env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    args = (tmp_path / "args.txt").read_text().split()
    assert args[:3] == ["--onnx=vad.onnx", "--saveEngine=vad.engine", "--noTF32"]
    # every dynamic input by name; the scalar sample rate is static and needs no entry
    assert args[3:6] == ["--minShapes=audio:1x256,state:2x1x32", "--optShapes=audio:2x256,state:2x2x32",
                         "--maxShapes=audio:8x256,state:2x8x32"]
    assert "profile audio min 1x256 opt 2x256 max 8x256; state min 2x1x32" in (bundle / "README.md").read_text()
    side = json.loads((bundle / "vad.engine.edgetl.json").read_text())
    assert side["extra"]["profile"]["state"] == {"min": [2, 1, 32], "opt": [2, 2, 32], "max": [2, 8, 32]}
    assert [t["name"] for t in side["contract"]["inputs"]] == ["audio", "state", "sr"]


def test_tensorrt_profile_refusals_are_one_line_before_any_file(vad_onnx, tmp_path):
    out = tmp_path / "out"
    refused(run_cli_here("export", str(vad_onnx), "--format", "tensorrt", "-o", str(out), *PROFILE[:6], "--no-parity"),
            "--min-shape state:2xSIZEx32")
    refused(run_cli_here("export", str(vad_onnx), "--format", "tensorrt", "-o", str(out), "--min-shape", "audio:4x256",
                    "--opt-shape", "audio:2x256", "--max-shape", "audio:8x256", "--no-parity"), "min", "opt")
    assert not out.exists()


def test_the_python_builder_sets_the_same_profile(vad_onnx, tmp_path, monkeypatch):
    """``build_engine`` (TensorRT's Python API, absent here) gets the profile the bundle's trtexec line has: a
    recording stand-in for the ``tensorrt`` module checks create_optimization_profile / set_shape /
    add_optimization_profile."""
    import sys
    import types

    from edgetl.contract import parse_flags
    from edgetl.contract_merge import require
    from edgetl.evaluate_contract import contract_for
    from edgetl.models import load_model
    from exporters.tensorrt import _settings, build_engine

    art = load_model(vad_onnx)
    art.contract = contract_for(art, parse_flags(min_shapes=PROFILE[1:12:6], opt_shapes=PROFILE[3:12:6],
                                                 max_shapes=PROFILE[5:12:6]))
    require(art.contract, shapes=True)
    s = _settings(art, tmp_path / "vad_tensorrt", precision=None, qdq=False, dynamic_batch=False, max_batch=1,
                  dla_core=None, workspace_mib=256)
    calls: list = []

    class Profile:
        def set_shape(self, *a):
            calls.append(("set_shape", *a))

    class Config:  # the builder config calls build_engine makes; only the profile is recorded
        def set_memory_pool_limit(self, *a):
            pass

        def clear_flag(self, *a):
            pass

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            return data

        def set_timing_cache(self, *a, **k):
            pass

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return None

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            calls.append(("create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine"

    class Parser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    trt = types.SimpleNamespace(__version__="10.0.0", Logger=Logger, Builder=Builder, OnnxParser=Parser,
                                MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
                                BuilderFlag=types.SimpleNamespace(TF32=0, FP16=1, INT8=2, GPU_FALLBACK=3),
                                NetworkDefinitionCreationFlag=types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("exporters.tensorrt._gpu_name", lambda: None)
    (tmp_path / "vad_tensorrt").mkdir()
    build_engine(tmp_path / "vad_tensorrt", s)
    assert calls == [("create_optimization_profile",), ("set_shape", "audio", (1, 256), (2, 256), (8, 256)),
                     ("set_shape", "state", (2, 1, 32), (2, 2, 32), (2, 8, 32)), ("add_optimization_profile",)]
    assert (tmp_path / "vad_tensorrt" / "vad.engine").read_bytes() == b"engine"
