"""Distillation's resumable state: the fingerprint a resumed run must share, RNG states, and the checkpoint,
loaded with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgetl.data import DataSplits
from edgetl.distill.config import DistillConfig
from edgetl.distill.teachers import Teacher
from edgetl.errors import InputFileError

__all__ = ["STATE_KIND", "STATE_VERSION", "cpu_state", "fingerprint", "load_state", "rng_states"]

STATE_KIND = "edgetl-distill-state"
STATE_VERSION = 1


def fingerprint(cfg: DistillConfig, student: nn.Module, teachers: list[Teacher], data: DataSplits) -> str:
    doc = {
        "options": cfg.training_options(),
        "student": [(k, list(v.shape)) for k, v in student.state_dict().items()],
        "teachers": [(t.artifact.arch, sum(p.numel() for p in t.model.parameters()), t.class_map) for t in teachers],
        "data": [data.name, len(data.train), len(data.val), list(data.classes)],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def rng_states(gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise InputFileError(f"{path}: unreadable distillation checkpoint ({type(e).__name__}); delete it to "
                             "start over") from None
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise InputFileError(f"{path} is not an edgetl distillation checkpoint; delete it or pick another output")
    return state
