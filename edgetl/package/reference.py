"""A bundle's own proof: reference images with their preprocessed tensor and outputs, and a labelled sample.

* ``reference/images/NNN.png``: the first test images of the dataset, lossless, as stored (uint8);
* ``reference/inputs.npy``: those images through :func:`edgetl.data.prepare` (run.py must match within 1e-5);
* ``reference/source_outputs.npy``: the source PyTorch model's outputs for them (the shipped artifact's own
  where no PyTorch source is known, and the manifest says so);
* ``reference/artifact_outputs.npy``: the shipped artifact's outputs here (where a runtime here runs it);
* ``reference/sample.npz``: a labelled test sample (uint8 ``x``, ``y``) with the source's and the artifact's
  top-1 predictions, for fidelity on the device.

Example::

    ref = build_reference(shipped, source, splits, bundle_dir, count=8, sample=200, precision="int8")
    ref["tolerance"]   # the parity thresholds of the shipped precision
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.artifact import Artifact, Format

__all__ = ["build_reference", "sample_arrays"]

log = logging.getLogger(__name__)

MAX_SAMPLE_BYTES = 16 << 20  # the fidelity sample stays a small part of the bundle


def build_reference(shipped: Artifact, source: Artifact | None, splits, root: Path, *, count: int, sample: int,
                    precision: str) -> dict[str, Any]:
    from edgetl.data import prepare
    from exporters.parity import THRESHOLDS

    test = splits.test if len(splits.test) else splits.train
    split_name = "test" if len(splits.test) else "train"
    k = min(count, len(test))
    images = test.images[:k]
    ref_dir = root / "reference"
    (ref_dir / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(k):
        name = f"reference/images/{i:03d}.png"
        _write_png(images[i].numpy(), root / name)
        names.append(name)
    inputs = prepare(images, shipped.input_spec).numpy().astype(np.float32)
    np.save(ref_dir / "inputs.npy", inputs)
    artifact_out = _outputs(shipped, inputs)
    source_out = _outputs(source, inputs) if source is not None else artifact_out
    if source_out is None:
        from edgetl.errors import ConfigError

        raise ConfigError(f"{shipped.name} does not run here and no PyTorch source was given: pass --source "
                          "MODEL.pt (the model it was made from) for the reference outputs")
    np.save(ref_dir / "source_outputs.npy", source_out.astype(np.float32))
    if artifact_out is not None:
        np.save(ref_dir / "artifact_outputs.npy", artifact_out.astype(np.float32))

    per_image = int(np.prod(test.images.shape[1:]))
    n = max(1, min(sample, len(test), MAX_SAMPLE_BYTES // max(per_image, 1)))
    sx, sy = test.images[:n], test.labels[:n].numpy()
    source_pred = _predict(source or shipped, sx)
    artifact_pred = _predict(shipped, sx) if artifact_out is not None else None
    arrays = {"x": sx.numpy().astype(np.uint8), "y": sy.astype(np.int64), "source_pred": source_pred}
    if artifact_pred is not None:
        arrays["artifact_pred"] = artifact_pred
    with open(ref_dir / "sample.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    limits = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    from exporters.parity import compare

    here = compare(source_out, artifact_out) if artifact_out is not None and source is not None else None
    return {
        "images": names,
        "labels": [int(v) for v in test.labels[:k]],
        "inputs": "reference/inputs.npy",
        "source_outputs": "reference/source_outputs.npy",
        "artifact_outputs": "reference/artifact_outputs.npy" if artifact_out is not None else None,
        "outputs_from": "source PyTorch model" if source is not None else f"the shipped {shipped.format.value} file, "
                        "run on the packaging machine",
        "sample": "reference/sample.npz",
        "sample_size": int(n),
        "dataset": f"{splits.name}/{split_name}[0:{n}] (split seed {splits.seed})",
        "sample_accuracy": {"source": float((source_pred == sy).mean()),
                            "artifact_here": float((artifact_pred == sy).mean()) if artifact_pred is not None else None},
        "artifact_vs_source_here": {k: here[k] for k in ("max_abs_error", "max_rel_error", "top1_agreement")}
        if here else None,
        "precision": precision,
        "tolerance": {"max_rel_error": limits.max_rel_error, "min_top1_agreement": limits.min_top1_agreement},
        "preprocess_tolerance": 1e-5,
    }


def _write_png(chw: np.ndarray, path: Path) -> None:
    from PIL import Image

    arr = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), mode=None).save(path, format="PNG")


def _runnable(art: Artifact) -> Artifact | None:
    """The artifact as a runner here can execute it (None where no runtime here runs its format)."""
    import importlib.util

    from benchmarks.runners import DEFAULT_RUNTIME

    if art.format is Format.TORCH:
        return art
    if art.format not in DEFAULT_RUNTIME:
        return None
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch",
              "tensorrt": "tensorrt", "litert": "ai_edge_litert"}.get(DEFAULT_RUNTIME[art.format])
    if module and importlib.util.find_spec(module) is None:
        log.warning("%s is not installed here: the bundle's artifact outputs are not recorded", module)
        return None
    return art


def _outputs(art: Artifact, inputs: np.ndarray) -> np.ndarray | None:
    from exporters.parity import run_artifact

    runnable = _runnable(art)
    if runnable is None:
        return None
    if runnable.format is Format.TORCH:
        import torch

        with torch.inference_mode():
            return runnable.model.eval()(torch.from_numpy(inputs)).float().numpy()
    return run_artifact(runnable, inputs)


def _predict(art: Artifact, images) -> np.ndarray:
    from edgetl.evaluate import predict

    return predict(art, images).argmax(1).astype(np.int64)


def sample_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
