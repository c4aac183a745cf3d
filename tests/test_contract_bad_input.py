"""A contract that contradicts the file is one line before any work, on every command that takes the contract
flags: wrong rank, an unknown input name, a size the file fixes or the model rejects, ``min > max`` and an opt
shape outside ``[min, max]``. ``tests/test_contract_cli.py`` covers these kinds on ``eval``; here are the other
commands (bench, export, quantize, prune, distill), one parametrized test.

"Before any work" is checked by what each run is given: ``--data`` names a file that does not exist (it is never
read: the contract is refused first), and the output path must still not exist afterwards. A shape the model
rejects is only known by running it once (``check_runs``), on the first sample of real data: there ``--data`` is
real and only that sample is read. A state dict and TorchScript do not record ranks, so "wrong rank" is checked on
prune against an edgetl checkpoint that records the contract (a pruned model of ``--arch module:Class``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import shapes
from tests.cli_checks import onnx_of, refused

ROOT = Path(__file__).resolve().parents[1]
FULL = ("--input", "audio:Nx256:float32", "--input", "state:2xNx32:float32", "--input", "sr:scalar:int64")


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    """VadLike (audio, a recurrent state, an int64 scalar sample rate) as ONNX, as a state dict of
    ``--arch tests.shapes:VadLike`` and as TorchScript: the three kinds of file the commands take."""
    d = tmp_path_factory.mktemp("badvad")
    torch.manual_seed(0)
    model = shapes.VadLike().eval()
    example = (torch.randn(1, 256), torch.zeros(2, 1, 32), torch.tensor(16000))
    onnx_of(model, example, d / "vad.onnx", inputs=["audio", "state", "sr"], outputs=["prob", "new_state"],
            dynamic={"audio": {0: "N"}, "state": {1: "N"}, "prob": {0: "N"}, "new_state": {1: "N"}})
    torch.save(model.state_dict(), d / "vad.pth")
    torch.jit.trace(model, example).save(str(d / "vad.ts"))
    from edgetl.artifact import Artifact, Format
    from edgetl.contract import InputTensor, ModelContract
    from edgetl.models import save_model

    recorded = ModelContract(inputs=(InputTensor("audio", ("N", 256), "float32"), InputTensor("state", (2, "N", 32),
                                                                                               "float32"),
                                     InputTensor("sr", (), "int64")), fixed=False)
    save_model(Artifact(format=Format.TORCH, model=model, arch="tests.shapes:VadLike", input_spec=None, labels=(),
                        contract=recorded), d / "vad.pt")
    rng = np.random.default_rng(0)  # real data whose state is 16 wide: what the model rejects
    np.savez(d / "vad16.npz", audio=rng.standard_normal((3, 1, 256)).astype(np.float32),
             state=np.zeros((3, 2, 1, 16), np.float32), sr=np.full(3, 16000, np.int64))
    return d


def _command(cmd: str, d: Path, out: Path, kind: str) -> list[str]:
    never = str(d / ("vad16.npz" if kind == "rejected shape" else "never-read.npz"))
    return {
        "bench": ["bench", str(d / "vad.onnx"), "--data", never, "--no-store"],
        "export": ["export", str(d / "vad.onnx"), "--format", "onnx", "-o", str(out), "--data", never],
        "quantize": ["quantize", str(d / "vad.onnx"), "--backend", "openvino", "--data", never, "-o", str(out)],
        "prune": ["prune", str(d / ("vad.pth" if kind == "rejected shape" else "vad.pt")), "--arch",
                  "tests.shapes:VadLike", "--data", never, "--ratio", "0.3", "-o", str(out)],
        "distill": ["distill", "-t", str(d / "vad.ts"), "-s", str(d / "vad.ts"), "--data", never, "-o", str(out)],
    }[cmd]


OUT = {"bench": "unused", "export": "exported", "quantize": "q.xml", "prune": "small.pt", "distill": "student.pt"}

KINDS = {  # kind: (flags, words the one line must hold)
    "wrong rank": (("--input", "state:2x32"), ("state", "rank")),
    "unknown name": (("--input", "stat:2xNx32"), ("stat", "state")),
    "fixed size": (("--input", "audio:Nx128"), ("256",)),
    "rejected shape": ((*FULL[:2], "--input", "state:2xNx16:float32", *FULL[4:]), ("rejects", "state 2x1x16")),
    "min > max": (("--min-shape", "audio:8x256", "--opt-shape", "audio:8x256", "--max-shape", "audio:2x256"),
                  ("audio", "max")),
    "opt outside": (("--min-shape", "audio:2x256", "--opt-shape", "audio:1x256", "--max-shape", "audio:8x256"),
                    ("audio", "opt")),
}

CASES = [("bench", k) for k in ("wrong rank", "unknown name", "fixed size")] \
    + [(c, k) for c in ("export", "quantize") for k in ("wrong rank", "unknown name", "fixed size", "min > max",
                                                        "opt outside")] \
    + [("prune", k) for k in ("wrong rank", "unknown name", "fixed size", "rejected shape")] \
    + [("distill", "unknown name")]


@pytest.mark.parametrize(("cmd", "kind"), CASES, ids=[f"{c}-{k.replace(' ', '-')}" for c, k in CASES])
def test_contract_contradicting_the_file_is_one_line_before_any_work(vad, tmp_path, cmd, kind):
    flags, words = KINDS[kind]
    out = tmp_path / OUT[cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "edgetl.cli", *_command(cmd, vad, out, kind), *flags],
                       capture_output=True, text=True, env=env, timeout=300)
    refused(r, *words)
    assert "never-read.npz" not in r.stderr  # the contract was refused before the data was looked at
    assert not out.exists()
