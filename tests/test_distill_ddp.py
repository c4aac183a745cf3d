"""Scale-out: `edgetl distill` under torchrun with 2 gloo processes computes the single-process result.

Each rank takes half of every global batch and DDP averages the gradients, so with plain SGD and frozen
normalisation statistics (``--stable-forward``) two processes must reproduce one process's training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgetl.data import load_data
from edgetl.distill import DistillConfig, distill
from edgetl.models import load_model


@pytest.mark.slow
def test_two_gloo_processes_equal_one(lite0_digits_path, digits, tmp_path):
    data = tmp_path / "d.npz"
    n = 160
    np.savez(data, x=digits.train.images[:n].numpy(), y=digits.train.labels[:n].numpy())
    out = tmp_path / "ddp.pt"
    opts = {"epochs": 3, "optimizer": "sgd", "momentum": 0.0, "lr": 0.05, "batch_size": 32, "views": "both",
            "alpha": 0.5, "stable_forward": True, "device": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "edgetl.cli", "distill", "-t", str(lite0_digits_path), "-s", "edgetl_tinycnn", "-d", str(data),
           "-o", str(out), "--json", "--epochs", "3", "--optimizer", "sgd", "--momentum", "0", "--lr", "0.05",
           "--batch-size", "32", "--views", "both", "--alpha", "0.5", "--stable-forward", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # one rank writes and reports
    ddp = json.loads(lines[0])
    assert ddp["world_size"] == 2 and out.exists()

    splits = load_data(data, seed=0)
    single = distill(load_model(lite0_digits_path), DistillConfig(student="edgetl_tinycnn", **opts), data=splits)
    m = single.history[-1].metrics
    assert m["world_size"] == 1
    for a, b in zip(ddp["history"][1:], m["history"][1:], strict=True):
        # Every epoch's training loss depends on all earlier updates: equal losses mean equal steps.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
        assert a["train_samples"] == b["train_samples"] == len(splits.train)
    # ...computed from shards: rank 0 saw half of each epoch's images.
    assert ddp["rank_samples_last_epoch"] == len(splits.train) // 2
    assert m["rank_samples_last_epoch"] == len(splits.train)
    assert ddp["history"][1]["train_loss"] != pytest.approx(ddp["history"][-1]["train_loss"], rel=1e-3)
    got = load_model(out).model.state_dict()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(got[k].float(), v.float(), atol=1e-4, rtol=1e-4, msg=k)
