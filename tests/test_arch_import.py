"""Your own architecture: ``--arch module.path:ClassName`` with ``--arch-args JSON``.

The user's code lives in a module written into a temporary directory on ``sys.path`` (and on ``PYTHONPATH`` for
the CLI subprocesses), as a user's own package would be. A state dict of it loads; pruned by torch-pruning surgery
it saves as tensors plus recorded widths (read back with ``weights_only=True``) and reloads only when the user
names the same ``--arch`` again; bad names and bad JSON are one line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.errors import ConfigError, UnknownNameError
from tests.cli_checks import refused as _one_line

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = '''
import torch
from torch import nn


class TwoHead(nn.Module):
    """Two inputs (an image and a side vector), two outputs; widths set by constructor arguments."""

    def __init__(self, width=8, side=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(width),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.mix = nn.Linear(2 * width + side, 16)
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 2)

    def forward(self, image, side):
        f = self.body(image).mean(dim=(2, 3))
        h = torch.relu(self.mix(torch.cat([f, side], dim=1)))
        return self.cls(h), self.reg(h)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("no GPU here")


NOT_A_MODULE = 3
'''


@pytest.fixture()
def user_pkg(tmp_path, monkeypatch):
    """A module ``user_nets_<id>`` of the user's, importable here and in CLI subprocesses."""
    name = f"user_nets_{os.getpid()}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return name, env


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _feed(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, 12, generator=g), torch.randn(n, 4, generator=g)


def _trained_like(model):
    """Give BatchNorm real running statistics and weights of varied magnitude, so pruning has something to rank."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand(p.shape, generator=g) * 2)
    model.train()
    with torch.no_grad():
        for s in range(4):
            model(*_feed(s, 16))
    return model.eval()


def test_state_dict_of_own_architecture_loads_with_its_args(user_pkg, tmp_path):
    from edgetl.models import load_model

    mod, _ = user_pkg
    import importlib

    cls = importlib.import_module(mod).TwoHead
    ref = _trained_like(cls(width=6, side=4))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    art = load_model(tmp_path / "w.pth", arch=f"{mod}:TwoHead", arch_args={"width": 6})
    assert art.arch == f"{mod}:TwoHead" and art.extra["arch_args"] == {"width": 6}
    assert art.input_spec is None and art.contract.input_names == ("image", "side")  # forward's names
    x = _feed()
    with torch.no_grad():
        for a, b in zip(ref(*x), art.model(*x), strict=True):
            torch.testing.assert_close(a, b)
    # the default constructor (width 8) does not fit width-6 tensors... unless widths are inferred from them
    art8 = load_model(tmp_path / "w.pth", arch=f"{mod}:TwoHead")
    assert art8.model.body[0].out_channels == 6


def test_pruned_own_architecture_saves_widths_and_reloads_with_the_same_arch(user_pkg, tmp_path):
    import importlib

    import torch_pruning as tp

    from edgetl.models import load_model, save_model

    mod, env = user_pkg
    spec = f"{mod}:TwoHead"
    model = _trained_like(importlib.import_module(mod).TwoHead(width=8))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    art = load_model(tmp_path / "w.pth", arch=spec, arch_args={"width": 8})
    before = sum(p.numel() for p in art.model.parameters())
    pruner = tp.pruner.MagnitudePruner(art.model, _feed(), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[art.model.cls, art.model.reg])
    pruner.step()  # surgery: channels really removed
    assert art.model.body[0].out_channels == 4 and art.model.body[2].num_parameters == 4
    after = sum(p.numel() for p in art.model.parameters())
    assert after < 0.7 * before
    x = _feed(3)
    with torch.no_grad():
        want = [t.clone() for t in art.model(*x)]
    ckpt = save_model(art, tmp_path / "pruned.pt")
    raw = torch.load(ckpt, weights_only=True)  # tensors, widths and strings only: no pickled code
    assert raw["arch"] == spec and "pickled_module" not in raw
    assert raw["structure"]["body.0"]["out_channels"] == 4 and raw["structure"]["body.2"]["num_parameters"] == 4
    with pytest.raises(ConfigError, match=f"--arch {spec}"):
        load_model(ckpt)  # a checkpoint never imports code by itself
    with pytest.raises(ConfigError, match="was saved from your own architecture"):
        load_model(ckpt, arch=f"{mod}:Broken")
    back = load_model(ckpt, arch=spec)
    assert sum(p.numel() for p in back.model.parameters()) == after
    assert back.contract.input_names == ("image", "side")
    with torch.no_grad():
        for a, b in zip(want, back.model(*x), strict=True):
            torch.testing.assert_close(a, b)
    # from the command line: the same checkpoint, the same --arch; the contract flags complete the inputs
    np.savez(tmp_path / "feeds.npz", image=x[0].numpy()[:, None], side=x[1].numpy()[:, None])
    r = _cli(env, "eval", str(ckpt), "--arch", spec, "--input", "image:1x1x12x12:float32",
             "--input", "side:1x4:float32", "--data", str(tmp_path / "feeds.npz"), "--reference", str(ckpt), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["samples"] == 2 and {o["output"] for o in out["fidelity"]["outputs"]} == {"output0", "output1"}
    assert all(o["max_abs"] == 0.0 for o in out["fidelity"]["outputs"])  # the same model twice: identical
    _one_line(_cli(env, "eval", str(ckpt), "--data", str(tmp_path / "feeds.npz")), f"--arch {spec}")


def test_bad_arch_names_and_args_are_one_line(user_pkg, tmp_path):
    from edgetl.models import load_model
    from edgetl.user_arch import build_user_arch, parse_arch_args

    mod, env = user_pkg
    import importlib

    torch.save(importlib.import_module(mod).TwoHead().state_dict(), tmp_path / "w.pth")
    with pytest.raises(UnknownNameError, match="TwoHead"):
        build_user_arch(f"{mod}:TwoHeads")
    with pytest.raises(ConfigError, match="not an nn.Module"):
        build_user_arch(f"{mod}:NOT_A_MODULE")
    with pytest.raises(ConfigError, match="do not fit"):
        build_user_arch(f"{mod}:TwoHead", {"depth": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_arch_args("{width: 3}")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_arch_args("[3]")
    with pytest.raises(Exception, match="no GPU here"):
        load_model(tmp_path / "w.pth", arch=f"{mod}:Broken")
    w = str(tmp_path / "w.pth")
    _one_line(_cli(env, "eval", w, "--arch", "no_such_pkg_xyz.nets:TwoHead", "--data", "digits"),
              "no_such_pkg_xyz")
    _one_line(_cli(env, "eval", w, "--arch", f"{mod}:TwoHeads", "--data", "digits"), "TwoHead")
    _one_line(_cli(env, "eval", w, "--arch", "3bad:name", "--data", "digits"), "module.path:ClassName")
    _one_line(_cli(env, "quantize", w, "--arch", f"{mod}:TwoHead", "--arch-args", "{width: 3}", "--data", "x.npz",
                   "--backend", "openvino", "-o", str(tmp_path / "q.xml")), "not valid JSON")
    assert not (tmp_path / "q.xml").exists()


def test_cli_prune_of_own_architecture_saves_widths_and_eval_reloads_with_the_same_arch(user_pkg, tmp_path):
    import importlib

    mod, env = user_pkg
    spec = f"{mod}:TwoHead"
    torch.save(_trained_like(importlib.import_module(mod).TwoHead()).state_dict(), tmp_path / "w.pth")
    x = _feed(5, 20)
    np.savez(tmp_path / "feeds.npz", image=x[0].numpy()[:, None], side=x[1].numpy()[:, None])
    contract = ("--input", "image:1x1x12x12:float32", "--input", "side:1x4:float32")
    r = _cli(env, "prune", str(tmp_path / "w.pth"), "--arch", spec, *contract, "--data", str(tmp_path / "feeds.npz"),
             "--ratio", "0.5", "--criterion", "l1", "-o", str(tmp_path / "pruned.pt"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    pruned = json.loads(r.stdout)
    assert pruned["arch"] == spec and pruned["params_after"] < pruned["params_before"]
    raw = torch.load(tmp_path / "pruned.pt", weights_only=True)  # widths and tensors, no code
    from edgetl.checkpoint import structure

    full = structure(importlib.import_module(mod).TwoHead())
    changed = {k for k, v in raw["structure"].items() if v != full[k]}
    assert changed and "pickled_module" not in raw  # surgery changed recorded widths
    r = _cli(env, "eval", str(tmp_path / "pruned.pt"), "--arch", spec, *contract, "--data",
             str(tmp_path / "feeds.npz"), "--reference", str(tmp_path / "pruned.pt"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(o["max_abs"] == 0.0 for o in json.loads(r.stdout)["fidelity"]["outputs"])
    _one_line(_cli(env, "eval", str(tmp_path / "pruned.pt"), *contract, "--data", str(tmp_path / "feeds.npz")),
              f"--arch {spec}")


def test_eval_and_export_take_arch_args(user_pkg, tmp_path):
    import importlib

    mod, env = user_pkg
    spec = f"{mod}:TwoHead"
    torch.save(_trained_like(importlib.import_module(mod).TwoHead(width=6)).state_dict(), tmp_path / "w.pth")
    x = _feed(7, 10)
    np.savez(tmp_path / "feeds.npz", image=x[0].numpy()[:, None], side=x[1].numpy()[:, None])
    contract = ("--input", "image:1x1x12x12:float32", "--input", "side:1x4:float32")
    out = tmp_path / "out"
    r = _cli(env, "export", str(tmp_path / "w.pth"), "--arch", spec, "--arch-args", '{"width": 6}', *contract,
             "--data", str(tmp_path / "feeds.npz"), "--format", "onnx", "-o", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(out.rglob("*.onnx"))
    r = _cli(env, "eval", str(tmp_path / "w.pth"), "--arch", spec, "--arch-args", '{"width": 6}', *contract,
             "--data", str(tmp_path / "feeds.npz"), "--reference", str(tmp_path / "w.pth"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    _one_line(_cli(env, "eval", str(tmp_path / "w.pth"), "--arch", spec, "--arch-args", "{width: 6}", *contract,
                   "--data", str(tmp_path / "feeds.npz")), "--arch-args", "not valid JSON")
    _one_line(_cli(env, "export", str(tmp_path / "w.pth"), "--arch", spec, "--arch-args", "[6]", *contract,
                   "--format", "onnx", "-o", str(tmp_path / "o2")), "JSON object")
    assert not (tmp_path / "o2").exists()


def test_cli_prunes_a_three_input_model_without_input_spec_and_reloads_it_by_its_recorded_contract(tmp_path):
    """VadLike (audio, a recurrent state, an int64 scalar sample rate; no input spec) from a state dict of a
    non-default width, pruned from the CLI with --arch and --arch-args: the checkpoint records the contract the
    --input flags gave and the arguments, never code, and eval reloads it with the same --arch and no flags."""
    from edgetl.models import load_model
    from tests import shapes
    from tests.cli_checks import ok_json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    spec = "tests.shapes:VadLike"
    torch.manual_seed(0)
    torch.save(shapes.VadLike(hidden=24).state_dict(), tmp_path / "vad.pth")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vad.npz", audio=rng.standard_normal((20, 1, 256)).astype(np.float32),
             state=rng.standard_normal((20, 2, 1, 24)).astype(np.float32) * 0.5, sr=np.full(20, 16000, np.int64))
    flags = ("--input", "audio:Nx256:float32", "--input", "state:2xNx24:float32", "--input", "sr:scalar:int64")
    out = tmp_path / "vad_small.pt"
    _one_line(_cli(env, "prune", str(tmp_path / "vad.pth"), "--arch", spec, "--arch-args", '{"hidden": ', *flags,
                   "--data", str(tmp_path / "vad.npz"), "--ratio", "0.3", "-o", str(out)), "--arch-args",
              "not valid JSON")
    assert not out.exists()
    res = ok_json(_cli(env, "prune", str(tmp_path / "vad.pth"), "--arch", spec, "--arch-args", '{"hidden": 24}',
                       *flags, "--data", str(tmp_path / "vad.npz"), "--ratio", "0.3", "-o", str(out), "--json"))
    assert res["arch"] == spec and res["widths_after"]["feat"] < res["widths_before"]["feat"] == 24
    raw = torch.load(out, weights_only=True)  # tensors, widths, strings: no pickled code
    assert "pickled_module" not in raw and raw["input_spec"] is None and raw["arch"] == spec
    assert json.loads(raw["extra_json"])["arch_args"] == {"hidden": 24}
    recorded = json.loads(raw["contract_json"])["inputs"]
    assert [(t["name"], t["shape"], t["dtype"]) for t in recorded] == [
        ("audio", ["N", 256], "float32"), ("state", [2, "N", 24], "float32"), ("sr", [], "int64")]
    assert raw["structure"]["feat"]["out_features"] == res["widths_after"]["feat"]
    with pytest.raises(ConfigError, match=f"--arch {spec}"):
        load_model(out)  # a checkpoint never imports code by itself
    back = load_model(out, arch=spec)
    assert back.contract.input_names == ("audio", "state", "sr") and back.contract.input("state").shape == (2, "N", 24)
    assert sum(p.numel() for p in back.model.parameters()) == res["params_after"]
    # eval reloads it with the same --arch and no contract flags; the source state dict is the reference
    ev = ok_json(_cli(env, "eval", str(out), "--arch", spec, "--data", str(tmp_path / "vad.npz"), "--reference",
                      str(tmp_path / "vad.pth"), "--json"))
    assert ev["samples"] == 20 and ev["reference_outputs"] == "by name"
    assert ev["contract"]["inputs"] == {"audio": "Nx256 float32", "state": "2xNx24 float32", "sr": "scalar int64"}
    fid = {o["output"]: o for o in ev["fidelity"]["outputs"]}
    assert set(fid) == {"output0", "output1"} and all(0.0 < o["max_abs"] for o in fid.values())  # really pruned
    assert fid["output0"]["cosine"] > 0.9
