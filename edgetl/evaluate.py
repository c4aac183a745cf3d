"""Accuracy of any runnable artifact (PyTorch, ONNX, OpenVINO, ...) on a dataset split.

Example::

    evaluate(load_model("model.onnx"), load_data("mnist5k"), split="test")["accuracy"]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.artifact import Artifact
from edgetl.data import DataSplits, check_classes, iterate
from edgetl.progress import task

__all__ = ["evaluate", "predict"]


def predict(artifact: Artifact, images, *, batch_size: int = 64, threads: int | None = None,
            runtime: str | None = None) -> np.ndarray:
    """Logits of ``artifact`` for uint8/float images (prepared to its input spec)."""
    import torch

    from edgetl.data import ImageSet

    data = ImageSet(images, torch.zeros(len(images), dtype=torch.int64))
    outs = []
    with _runner(artifact, batch_size, threads, runtime) as r:
        for x, _ in iterate(data, artifact.input_spec, batch_size=batch_size):
            outs.append(_run_padded(r, x.numpy()))
    return np.concatenate(outs) if outs else np.zeros((0, artifact.num_classes), np.float32)


def _runner(artifact: Artifact, batch_size: int, threads: int | None, runtime: str | None = None):
    from edgetl.runtimes import open_runtime, runner_for

    name = runner_for(artifact.format, runtime)
    extra = {"batch": batch_size} if name == "openvino" else {}
    return open_runtime(artifact, runtime=name, threads=threads, extra=extra)


def _run_padded(runner, x: np.ndarray) -> np.ndarray:
    fb = runner.fixed_batch
    if not fb or fb == x.shape[0]:
        return np.asarray(runner.run(np.ascontiguousarray(x, dtype=np.float32)))
    outs = []
    for i in range(0, x.shape[0], fb):
        chunk = x[i : i + fb]
        n = chunk.shape[0]
        if n < fb:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fb - n, axis=0)])
        outs.append(np.asarray(runner.run(np.ascontiguousarray(chunk, dtype=np.float32)))[:n])
    return np.concatenate(outs)


def evaluate(artifact: Artifact, data: DataSplits, *, split: str = "test", batch_size: int = 64,
             threads: int | None = None, limit: int | None = None, runtime: str | None = None) -> dict[str, Any]:
    """Top-1 accuracy (0..1), mean cross-entropy and sample count of ``artifact`` on ``split``, run by
    ``runtime`` (default: the format's own, see :mod:`edgetl.formats`)."""
    check_classes(artifact.labels, data)
    subset = data.split(split)
    n_total = len(subset) if limit is None else min(limit, len(subset))
    correct, loss, n = 0, 0.0, 0
    with _runner(artifact, batch_size, threads, runtime) as r, task(f"evaluate {split}", n_total) as bar:
        for x, y in iterate(subset, artifact.input_spec, batch_size=batch_size, limit=limit):
            logits = _run_padded(r, x.numpy()).astype(np.float64)
            yv = y.numpy()
            m = logits.max(axis=1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
            loss += float((logz - logits[np.arange(len(yv)), yv]).sum())
            correct += int((logits.argmax(1) == yv).sum())
            n += len(yv)
            bar.advance(len(yv))
        info = r.describe()
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "samples": n, "split": split,
            "runtime": info}
