"""``edgetl bench`` of any model: a three-input ONNX (a recurrent state, an int64 sample rate) timed on the real
feeds of ``--data``, every input by name; a dynamic H x W segmenter timed at the ``--opt-shape`` given; facts
that cannot be made up (a sample rate) or that contradict each other are one line before any timing.

No timing figure is asserted (no timed unit tests): what is checked is what was fed and that it ran.
"""

from __future__ import annotations

import numpy as np
import onnxruntime  # noqa: F401  (part of the test install: missing is a failure, not a skip)
import pytest
import torch

from tests import shapes
from tests.cli_checks import ok_json as _ok
from tests.cli_checks import onnx_of as _onnx
from tests.cli_checks import refused as _refused
from tests.conftest import run_cli_here

QUICK = ("--min-time", "0", "--min-count", "5", "--max-time", "10", "--warmup", "0", "--warmup-runs", "1",
         "--rounds", "1", "--threads", "1", "--no-store", "--json")


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bvad")
    torch.manual_seed(0)
    model = shapes.VadLike().eval()
    example = (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000))
    src = _onnx(model, example, d / "vad.onnx", inputs=["audio", "state", "sr"], outputs=["prob", "new_state"],
                dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})
    rng = np.random.default_rng(2)
    np.savez(d / "vad.npz", audio=rng.standard_normal((6, 1, 256)).astype(np.float32),
             state=rng.uniform(-1, 1, (6, 2, 1, 32)).astype(np.float32), sr=np.full((6,), 8000, np.int64))
    return {"src": src, "data": d / "vad.npz", "d": d}


def test_bench_multi_input_onnx_times_the_real_feeds(vad):
    out = _ok(run_cli_here("bench", str(vad["src"]), "--data", str(vad["data"]), *QUICK))
    r = out["results"][0]
    assert r["runtime"] == "onnxruntime" and r["latency_ms"]["count"] >= 5
    assert r["inputs"].startswith(f"data:{vad['data']}[0:6]")
    for part in ("audio 1x256", "state 2x1x32", "sr scalar"):  # every input by name, as the data gave it
        assert part in r["inputs"], r["inputs"]
    assert r["artifact_meta"]["input_shape"] == {"audio": ["N", 256], "state": [2, "N", 32], "sr": []}
    assert r["runner"]["outputs_finite"] is True


def test_bench_multi_input_refuses_a_sample_rate_it_would_have_to_make_up(vad):
    _refused(run_cli_here("bench", str(vad["src"]), *QUICK), "--opt-shape audio")  # first: the size to time at
    _refused(run_cli_here("bench", str(vad["src"]), "--opt-shape", "audio:1x256", "--opt-shape", "state:2x1x32", *QUICK),
             "'sr'", "--data")
    _refused(run_cli_here("bench", str(vad["src"]), "--input", "audio:Nx128", "--data", str(vad["data"]), *QUICK),
             "256")


@pytest.fixture(scope="module")
def segnet(tmp_path_factory):
    d = tmp_path_factory.mktemp("bseg")
    torch.manual_seed(0)
    dyn = {"image": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", 2: "H", 3: "W"}}
    src = _onnx(shapes.SegNet(), (torch.zeros(1, 1, 28, 28),), d / "seg.onnx", inputs=["image"], outputs=["mask"],
                dynamic=dyn)
    x = shapes.mnist(None)[0][:4]
    np.savez(d / "seg28.npz", image=x)
    np.savez(d / "seg40x56.npz", image=torch.nn.functional.interpolate(torch.from_numpy(x), size=(40, 56)).numpy())
    return {"src": src, "d": d}


def test_bench_dynamic_hw_is_timed_at_the_opt_shape(segnet):
    src, d = str(segnet["src"]), segnet["d"]
    synthetic = _ok(run_cli_here("bench", src, "--opt-shape", "image:1x1x40x56", *QUICK))["results"][0]
    assert synthetic["inputs"] == "synthetic: standard normal (no --data) (image 1x1x40x56)"
    real = _ok(run_cli_here("bench", src, "--opt-shape", "image:1x1x40x56", "--data", str(d / "seg40x56.npz"),
                       *QUICK))["results"][0]
    assert "image 1x1x40x56" in real["inputs"] and real["inputs"].startswith("data:")
    assert real["artifact_meta"]["input_shape"] == {"image": [1, 1, 40, 56]}
    _refused(run_cli_here("bench", src, "--opt-shape", "image:1x1x40x56", "--data", str(d / "seg28.npz"), *QUICK),
             "--opt-shape", "1x1x28x28")
    _refused(run_cli_here("bench", src, *QUICK), "--opt-shape")  # H x W dynamic and no size given: nothing guessed
