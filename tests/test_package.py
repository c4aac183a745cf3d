"""Packaging for the device: bundles from real compressed models, run in a fresh venv without torch or edgetl,
verified over SSH against the loopback sshd of the remote-bench tests, tampering and bad input refused.

Models: the digits-trained EfficientNet-Lite0 fixture, pruned (l1) and quantized with edgetl's own API (int8 QDQ
ONNX for ONNX Runtime, NNCF int8 OpenVINO IR), and a TinyCNN trained briefly on MNIST at 20x20 (bicubic
downscaling of 28x28 digits: the other resize path).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bench_remote import Sshd

from tests.conftest import run_cli_here

QUICK = ["--min-time", "0.05", "--min-count", "5", "--warmup", "0.0", "--warmup-runs", "1", "--threads", "1"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pruned(lite0_digits_path, digits):
    """LRP-pruned (20 % of the channels), BatchNorm statistics recomputed: ~0.96 val top-1 (0.61 without)."""
    from edgetl.finetune import adapt_batchnorm
    from edgetl.models import load_model
    from edgetl.prune import PruneConfig, prune

    art = prune(load_model(lite0_digits_path), PruneConfig(criterion="lrp", ratio=0.2, samples_per_class=5),
                data=digits)
    adapt_batchnorm(art.model, digits, art.input_spec)
    art.model.eval()
    return art


@pytest.fixture(scope="module")
def int8_onnx(pruned, digits, tmp_path_factory) -> Path:
    from edgetl.quantize import QuantizeConfig, quantize
    from edgetl.stages import StageContext

    out = tmp_path_factory.mktemp("pkg-int8") / "pruned.int8.onnx"
    q = quantize(pruned, QuantizeConfig(backend="onnxruntime", calib_samples=100, calibration="mean-minmax"),
                 data=digits, ctx=StageContext(output=out))
    return Path(q.path)


@pytest.fixture(scope="module")
def int8_openvino(pruned, digits, tmp_path_factory) -> Path:
    from edgetl.quantize import QuantizeConfig, quantize
    from edgetl.stages import StageContext

    out = tmp_path_factory.mktemp("pkg-ov") / "pruned.int8.xml"
    q = quantize(pruned, QuantizeConfig(backend="openvino", calib_samples=100), data=digits, ctx=StageContext(output=out))
    return Path(q.path)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    """A second shape: TinyCNN on MNIST 28x28 grey, fed 3x20x20 (bicubic, antialiased downscaling)."""
    import dataclasses

    import torch

    import edgetl.distill  # noqa: F401 - registers edgetl_tinycnn
    from edgetl.artifact import InputSpec, StageRecord
    from edgetl.data import load_data
    from edgetl.models import load_model, save_model
    from edgetl.train import fit

    torch.manual_seed(0)
    splits = load_data("mnist5k", seed=0)
    art = load_model("edgetl_tinycnn", num_classes=10, pretrained=False)
    spec = InputSpec(shape=(3, 20, 20), source_channels=1, resize="bicubic")
    r = fit(art.model, splits, spec, epochs=2, lr=3e-3, batch_size=64)
    art = dataclasses.replace(art, input_spec=spec, history=[StageRecord(
        "train", options={"data": "mnist5k", "epochs": 2}, metrics={"val_accuracy": r.best_val_accuracy})])
    assert r.best_val_accuracy > 0.6  # it learned the task
    return save_model(art, tmp_path_factory.mktemp("pkg-tiny") / "tiny.pt")


def _bare_env() -> dict[str, str]:
    """The environment of a board: no PYTHONPATH pointing at this checkout, no active venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _venv_for(requirements: Path, cache: Path) -> Path:
    """A fresh venv with only ``requirements`` installed (from PyPI), cached across runs by their content."""
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"venv-{key}"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_bare_env())
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)],
                           check=True, timeout=1200, env=_bare_env())
            (venv / ".ready").touch()
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def venv_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp().parent / "edgetl-bundle-venvs"


def _png_images(images, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chw in enumerate(images.numpy()):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(p)
        paths.append(p)
    return paths


def _package(src, out: Path, *extra: str) -> dict:
    r = run_cli_here("package", str(src), "-o", str(out), "--json", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- preprocessing parity
@pytest.mark.parametrize("method", ["bilinear", "bicubic", "nearest"])
def test_runner_preprocessing_equals_the_training_pipeline(method):
    import torch

    from edgetl.artifact import InputSpec
    from edgetl.data import prepare
    from edgetl.package.board_runner import preprocess
    from edgetl.package.manifest import preprocessing

    rng = np.random.default_rng(0)
    for cin, cout, size, out in [(1, 3, (8, 8), (32, 32)), (3, 3, (100, 77), (64, 48)), (3, 1, (224, 300), (224, 224)),
                                 (1, 1, (28, 28), (20, 20)), (3, 3, (32, 32), (32, 32))]:
        img = rng.integers(0, 256, (cin, *size), dtype=np.uint8)
        spec = InputSpec(shape=(cout, *out), mean=(0.485, 0.456, 0.406)[:cout], std=(0.229, 0.224, 0.225)[:cout],
                         source_channels=cin, resize=method)
        ref = prepare(torch.from_numpy(img)[None], spec).numpy()
        got = preprocess([img], preprocessing(spec))
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-5, (method, cin, cout, size, out)


# --------------------------------------------------------------------------- bundles in a fresh venv
@pytest.mark.slow
def test_int8_onnx_bundle_runs_in_a_fresh_venv_without_torch(int8_onnx, digits, venv_cache, tmp_path):
    import torch

    from edgetl.evaluate import predict
    from edgetl.models import load_model

    bundle = tmp_path / "bundle"
    out = _package(int8_onnx, bundle, "--device", "x86-cpu")
    assert out["model"]["format"] == "onnx" and out["model"]["precision"] == "int8"
    files = set(out["files"])
    for f in ("manifest.json", "labels.txt", "requirements.txt", "run.py", "README.md", "SHA256SUMS",
              "model/pruned.int8.onnx", "reference/inputs.npy", "reference/source_outputs.npy", "reference/sample.npz"):
        assert f in files, f
    listed = [ln.split(None, 1)[1] for ln in (bundle / "SHA256SUMS").read_text().splitlines()]
    assert sorted(listed) == sorted(files - {"SHA256SUMS"})  # every other file, nothing else
    reqs = (bundle / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "numpy" in reqs and "pillow" in reqs
    assert "torch" not in reqs and "edgetl" not in reqs
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["preprocessing"]["resize"] == {**man["preprocessing"]["resize"], "method": "bilinear",
                                              "antialias": True, "align_corners": False}
    assert man["labels"] == list(digits.classes) and (bundle / "labels.txt").read_text().split() == man["labels"]
    stages = [h["stage"] for h in man["history"]]
    assert "prune" in stages and stages[-1] == "quantize"
    assert man["history"][-1]["metrics"]["accuracy"] > 0.5

    py = _venv_for(bundle / "requirements.txt", venv_cache)
    for mod in ("torch", "edgetl"):
        r = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True, text=True, cwd=tmp_path,
                           env=_bare_env())
        assert r.returncode != 0 and "No module named" in r.stderr, mod

    # Real images beyond the reference ones: edgetl's own prediction vs run.py's in the fresh venv.
    images = digits.test.images[20:50]
    pngs = _png_images(images, tmp_path / "pngs")
    r = subprocess.run([str(py), "run.py", *map(str, pngs)], capture_output=True, text=True, cwd=bundle,
                       env=_bare_env())
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["runtime"] == "onnxruntime"
    theirs = [x["top"][0]["index"] for x in res["results"]]
    ours = predict(load_model(int8_onnx), images).argmax(1).tolist()
    assert theirs == ours
    assert all(x["top"][0]["label"] == digits.classes[x["top"][0]["index"]] for x in res["results"])

    # Preprocessing parity in the venv: run.py's tensor for the reference PNGs vs the training pipeline's.
    from edgetl.data import prepare
    from edgetl.package.board_runner import to_array

    script = ("import io, sys, numpy as np; from run import Model, preprocess; m = Model(); "
              "r = m.manifest['reference']; x = preprocess(r['images'], m.spec); b = io.BytesIO(); np.save(b, x); "
              "sys.stdout.buffer.write(b.getvalue())")
    r = subprocess.run([str(py), "-c", script], capture_output=True, cwd=bundle, env=_bare_env())
    assert r.returncode == 0, r.stderr[-2000:]
    import io

    theirs_x = np.load(io.BytesIO(r.stdout))
    ref_imgs = torch.from_numpy(np.stack([to_array(bundle / p, "L") for p in man["reference"]["images"]]))
    train_x = prepare(ref_imgs, load_model(int8_onnx).input_spec).numpy()
    assert np.abs(theirs_x - train_x).max() <= 1e-5
    assert np.abs(np.load(bundle / "reference/inputs.npy") - train_x).max() == 0.0


@pytest.mark.slow
def test_openvino_bundle_runs_in_a_fresh_venv_and_verifies_over_ssh(int8_openvino, digits, venv_cache, tmp_path):
    from benchmarks.store import ResultsStore
    from edgetl.evaluate import predict
    from edgetl.models import load_model

    bundle = tmp_path / "bundle-ov"
    out = _package(int8_openvino, bundle, "--device", "x86-cpu")
    assert out["model"]["format"] == "openvino" and {"model/pruned.int8.xml", "model/pruned.int8.bin"} <= set(out["files"])
    assert "openvino" in (bundle / "requirements.txt").read_text()
    py = _venv_for(bundle / "requirements.txt", venv_cache)
    images = digits.test.images[:40]
    pngs = _png_images(images, tmp_path / "pngs")
    r = subprocess.run([str(py), "run.py", "--top-k", "1", *map(str, pngs)], capture_output=True, text=True,
                       cwd=bundle, env=_bare_env())
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["runtime"] == "openvino"
    assert [x["top"][0]["index"] for x in res["results"]] == predict(load_model(int8_openvino), images).argmax(1).tolist()

    d = Sshd(tmp_path / "sshd")
    try:
        db = tmp_path / "results.db"
        ssh = ["--host", "board", "--ssh-config", str(d.config), "--python", str(py), "--db", str(db)]
        r = run_cli_here("verify", str(bundle), *ssh, "--json", *QUICK)
        assert r.returncode == 0, r.stderr[-3000:]
        v = json.loads(r.stdout)
        assert v["ok"] and v["host"] == "board" and v["line"].startswith("verified on x86-cpu")
        assert {c["name"] for c in v["checks"]} == {"checksums on the device", "preprocessing", "reference outputs",
                                                    "source decisions", "fidelity"}
        assert v["fidelity"]["samples"] == 200 and v["fidelity"]["agreement"] >= 0.85
        [stored] = ResultsStore(db).results()
        assert stored.host == "board" and stored.device == "x86-cpu" and stored.runtime == "openvino"
        assert stored.accuracy_source.startswith("verified on x86-cpu") and stored.latency_ms.count >= 5
        assert stored.runner["verified_on"] == "x86-cpu"
        assert not list(Path("/tmp/edgetl-bench").glob("verify-*-bundle-ov"))  # cleaned up on the board

        # The user's data instead of the bundled sample, on the board.
        r = run_cli_here("verify", str(bundle), *ssh, "--data", "digits", "--sample", "50", "--json", *QUICK)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["fidelity"]["samples"] == 50

        # A tampered file fails with its name, before anything runs on the board.
        labels = bundle / "labels.txt"
        labels.write_text(labels.read_text().replace("7", "1"))
        r = run_cli_here("verify", str(bundle), *ssh, *QUICK)
        assert r.returncode == 1 and "labels.txt" in r.stderr and "checksum" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert len(ResultsStore(db).results()) == 2  # nothing stored for the failed one
    finally:
        d.stop()


@pytest.mark.slow
def test_second_shape_from_pytorch_predicts_like_edgetl(tiny_mnist, tmp_path):
    from edgetl.data import load_data
    from edgetl.evaluate import predict
    from edgetl.models import load_model

    bundle = tmp_path / "tiny"
    out = _package(tiny_mnist, bundle, "--device", "raspberry-pi-5", "--sample", "64")
    assert out["model"]["format"] == "onnx"  # exported from PyTorch, parity-checked
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["preprocessing"]["resize"]["method"] == "bicubic" and man["inputs"][0]["shape"][1:] == [3, 20, 20]
    assert man["source"]["sha256"] == hashlib.sha256(tiny_mnist.read_bytes()).hexdigest()
    splits = load_data("mnist5k", seed=0)
    pngs = _png_images(splits.test.images[:16], tmp_path / "pngs")
    r = run_cli_here("predict", str(bundle), *map(str, pngs), "--json")
    assert r.returncode == 0, r.stderr
    bundle_top = [x["top"][0]["index"] for x in json.loads(r.stdout)["results"]]
    r = run_cli_here("predict", str(tiny_mnist), *map(str, pngs), "--json")
    assert r.returncode == 0, r.stderr
    file_top = [x["top"][0]["index"] for x in json.loads(r.stdout)["results"]]
    ours = predict(load_model(tiny_mnist), splits.test.images[:16]).argmax(1).tolist()
    assert bundle_top == file_top == ours
    r = run_cli_here("verify", str(bundle), "--no-store", "--json", *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]
    v = json.loads(r.stdout)
    assert v["ok"] and v["device"] == "raspberry-pi-5" and v["host"] == "local"
    # An edited run.py with consistently rewritten checksums is code this edgetl did not ship: not run here.
    run_py = bundle / "run.py"
    run_py.write_text(run_py.read_text() + "\nprint('side effect')\n")
    sums = bundle / "SHA256SUMS"
    sums.write_text("".join(f"{hashlib.sha256((bundle / ln.split(None, 1)[1]).read_bytes()).hexdigest()}  "
                            f"{ln.split(None, 1)[1]}\n" for ln in sums.read_text().splitlines()))
    r = run_cli_here("verify", str(bundle), "--no-store", *QUICK)
    assert r.returncode == 1 and "not the runner this edgetl ships" in r.stderr


@pytest.mark.slow
def test_jetson_bundle_ships_an_onnx_its_tensorrt_parses(int8_onnx, tmp_path):
    import onnx

    def opset(path):
        return max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))

    assert opset(int8_onnx) > 17, "the fixture no longer exercises the conversion to the board's opset"
    bundle = tmp_path / "jetson"
    out = _package(int8_onnx, bundle, "--device", "jetson-orin-nano")
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["device"]["max_onnx_opset"] == 17
    assert opset(bundle / "model" / "model.onnx") <= 17
    assert "edgetl eval" not in (bundle / "model" / "README.md").read_text()  # nothing asks for edgetl on the board
    assert (bundle / "model" / "build.sh").exists() and "--stronglyTyped" in (bundle / "model" / "build.sh").read_text()
    assert [r["runtime"] for r in out["runs"]] == ["tensorrt", "onnxruntime"]
    assert "./model/build.sh" in (bundle / "README.md").read_text()
    # Without the engine (built on the board), run.py says so and runs the ONNX it is built from.
    r = subprocess.run([sys.executable, "run.py", "reference/images/000.png"], capture_output=True, text=True,
                       cwd=bundle)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["runtime"] == "onnxruntime" and "model/model.engine is missing" in res["note"]


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_exit_2(lite0_digits_path, tmp_path):
    cases = [
        (["package", str(tmp_path / "nope"), "--device", "x86-cpu", "-o", str(tmp_path / "o1")], "nothing to package"),
        (["package", str(lite0_digits_path), "--device", "x86-cpux", "-o", str(tmp_path / "o2")], "did you mean 'x86-cpu'"),
        (["verify", str(tmp_path / "missing-bundle")], "bundle not found"),
        (["predict", str(tmp_path / "missing-bundle"), str(lite0_digits_path)], "not found"),
    ]
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases.append((["package", str(lite0_digits_path), "--device", "x86-cpu", "-o", str(blocker / "bundle")],
                  "is a file"))
    for args, needle in cases:
        r = run_cli_here(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and blocker.read_text() == "x"


# --------------------------------------------------------------------------- from a run directory
@pytest.mark.slow
def test_run_directory_packages_its_recommended_artifact(lite0_digits_path, tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pkg", "data": "digits", "stages": [
        {"quantize": {"backend": "openvino", "calib_samples": 100}},
        {"bench": {"devices": ["x86-cpu"], "threads": 1, "min_time_s": 0.05, "min_count": 5, "warmup_runs": 1,
                   "warmup_s": 0.0}}]}))
    run_dir = tmp_path / "run"
    r = run_cli_here("run", "--recipe", str(recipe), "--model", str(lite0_digits_path), "-o", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((run_dir / "report.json").read_text())["recommendation"]
    bundle = tmp_path / "bundle"
    r = run_cli_here("package", str(run_dir), "--device", "x86-cpu", "-o", str(bundle))
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(bundle) in r.stderr  # the path is printed
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["measured"]["role"] == rec["role"] and man["measured"]["p90_ms"] == rec["p90_ms"]
    assert man["source"]["sha256"] == hashlib.sha256(lite0_digits_path.read_bytes()).hexdigest()  # no prune/distill
    if rec["role"] == "quantized":  # the NNCF IR the run measured, copied as it is
        assert man["model"]["format"] == "openvino" and man["model"]["precision"] == "int8"
        assert Path(man["model"]["packaged_from"]).name == Path(rec["file"]).name
        assert man["model"]["sha256"] == hashlib.sha256(Path(man["model"]["packaged_from"]).read_bytes()).hexdigest()
    else:  # the eager teacher: exported for the device, and the manifest says its figures are the eager model's
        assert rec["role"] == "teacher" and man["model"]["format"] == "onnx" and "measured as torch" in man["measured"]["note"]
    r = run_cli_here("verify", str(bundle), "--no-store", "--json", *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["ok"]
    if rec["format"] == "openvino":  # a Jetson takes no OpenVINO IR: the fastest in budget that it takes, said so
        out = _package(run_dir, tmp_path / "jetson", "--device", "jetson-orin-nano")
        man = json.loads((tmp_path / "jetson" / "manifest.json").read_text())
        assert rec["artifact"] in man["measured"]["substituted"] and out["model"]["format"] == "onnx"
        assert man["measured"]["role"] != rec["role"]


# --------------------------------------------------------------------------- phones
@pytest.mark.slow
def test_phone_bundles_carry_the_manifest_reference_data_and_an_android_note(tiny_mnist, int8_onnx, tmp_path):
    for src, fmt, lib in ((tiny_mnist, "executorch", "executorch-android"), (int8_onnx, "ort", "onnxruntime-android")):
        bundle = tmp_path / fmt
        out = _package(src, bundle, "--device", "android-arm64", "--sample", "32")
        files = set(out["files"])
        assert out["model"]["format"] == fmt and "ANDROID.md" in files and "run.py" not in files
        assert {"manifest.json", "labels.txt", "reference/inputs.npy", "reference/source_outputs.npy",
                "reference/sample.npz", "SHA256SUMS"} <= files
        note = (bundle / "ANDROID.md").read_text()
        assert out["model"]["file"] in note and lib in note
        assert "torch" not in (bundle / "requirements.txt").read_text().replace("# ", "")
        r = run_cli_here("verify", str(bundle), "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        v = json.loads(r.stdout)
        assert v["ok"] and v["on_device"] is False and v["result"] is None
        assert v["line"].startswith("checked on this machine, NOT on android-arm64")
    r = run_cli_here("verify", str(bundle), "--host", "board")
    assert r.returncode == 2 and "phone bundle" in r.stderr
