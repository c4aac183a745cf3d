"""The on-disk cache of latency-table points: one JSON per device profile, runtime and version, threads and
precision (:mod:`benchmarks.latency_table`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CACHE_VERSION", "cache_path", "default_cache_dir", "load_cache", "model_key"]

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("EDGETL_LATENCY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgetl" / "latency"


def cache_path(cache_dir: Path, device: str, runtime: str, version: str, threads, precision: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{device}-{runtime}-{version}-t{threads or 'all'}-{precision}")
    return cache_dir / f"{slug}.json"


def load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    return data if data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION, "points": {}, "models": {}}


def model_key(model, input_shape) -> str:
    return hashlib.sha256((repr(model) + repr(tuple(input_shape))).encode()).hexdigest()[:20]
