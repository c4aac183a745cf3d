"""Does the exported file compute what the source model computes? Compare their logits on a few inputs.

Metrics: ``max_abs_error``, ``mean_abs_error``, ``max_rel_error`` (the max abs error relative to the largest
reference logit magnitude: element-wise relative error explodes on logits near zero and says nothing),
``top1_agreement`` and ``near_ties`` (disagreements where the reference's top-2 margin is within the measured
error, which no exporter can be blamed for). Thresholds depend on the precision the export targets; exceeding
one raises :class:`~edgetl.errors.ParityError` carrying the numbers.

Inputs are real when they can be: ``--data``, else the dataset the artifact's history records, else seeded
synthetic images, and the metrics say which (``inputs``).

Example::

    inputs = parity_inputs(art, data=load_data("digits"))
    check_parity(art, onnx_art, inputs, precision=Precision.FP32)["max_abs_error"]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.artifact import Artifact, Format
from edgetl.errors import EdgetlError, ParityError
from edgetl.formats import FORMAT_INFO, Precision, runs_here

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.data import DataSplits
    from edgetl.inputs import InputSet

__all__ = ["THRESHOLDS", "ContractParityInputs", "ParityInputs", "ParityThresholds", "check_parity", "compare", "parity_inputs"]

log = logging.getLogger(__name__)

DEFAULT_COUNT = 16


@dataclass(frozen=True)
class ParityThresholds:
    """Largest relative error and smallest top-1 agreement (ties excluded) an export may show."""

    max_rel_error: float
    min_top1_agreement: float


# fp32 runtimes reorder sums and fuse ops: ~1e-6 relative is typical, 1e-3 leaves room without hiding bugs.
# fp16 weights (BN folded in) lose ~3 digits each and that compounds over ~50 layers: 0.06 measured on the
# 32x32 digits Lite0 with top-1 unchanged, so fp16 and int8 are judged by decisions more than by values.
THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(max_rel_error=1e-3, min_top1_agreement=1.0),
    "fp16": ParityThresholds(max_rel_error=0.1, min_top1_agreement=0.95),
    # int8 clips outlying activations to the calibrated range: the largest logits move most (0.30 measured with
    # only the head quantized, top-1 unchanged). Broken scales show as agreement collapse or errors >= 1.
    "int8": ParityThresholds(max_rel_error=0.5, min_top1_agreement=0.85),
}


@dataclass(frozen=True)
class ParityInputs:
    """A float32 NCHW batch prepared to the model's input spec, and where it came from (for the report)."""

    batch: np.ndarray
    source: str

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic")


@dataclass(frozen=True)
class ContractParityInputs:
    """Samples (``{input name: array}``, batch 1 each) for a model exported by its contract, and their origin."""

    samples: tuple[dict[str, np.ndarray], ...]
    source: str

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic")


def parity_inputs(artifact: Artifact, *, data: DataSplits | InputSet | None = None, count: int = DEFAULT_COUNT,
                  seed: int = 0) -> ParityInputs | ContractParityInputs:
    """``count`` inputs for a parity check: from ``data``, the recorded dataset, or labelled synthetic images.
    A model with a contract and no input spec gets :class:`ContractParityInputs`: ``data`` an
    :class:`~edgetl.inputs.InputSet`, else seeded synthetic inputs at the contract's opt shapes."""
    import torch

    from edgetl.data import prepare

    if artifact.input_spec is None and artifact.contract is not None:
        return _contract_inputs(artifact, data, count, seed)

    splits, origin = data, "given"
    if splits is None:
        splits, origin = _recorded_dataset(artifact), "recorded in the model's history"
    if splits is not None:
        split = splits.test if len(splits.test) else splits.train
        images = split.images[:count]
        batch = prepare(images, artifact.input_spec).numpy().astype(np.float32)
        name = "test" if len(splits.test) else "train"
        return ParityInputs(np.ascontiguousarray(batch), f"data: first {len(batch)} {name} images of "
                                                         f"{splits.name!r} ({origin})")
    spec = artifact.input_spec
    c = spec.source_channels or spec.channels
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, c, *spec.resolution), generator=g, dtype=torch.uint8)
    batch = prepare(images, spec).numpy().astype(np.float32)
    return ParityInputs(np.ascontiguousarray(batch),
                        f"synthetic: {count} seeded uniform-noise images (no dataset recorded; pass --data for "
                        "real inputs)")


def _recorded_dataset(artifact: Artifact):
    from pathlib import Path

    from edgetl.data import BUILTIN_DATASETS, load_data

    name, seed = artifact.extra.get("data"), 0
    for rec in reversed(artifact.history):
        if "data" in rec.options:
            name, seed = rec.options["data"], int(rec.options.get("split_seed", 0) or 0)
            break
    if not name:
        return None
    if name not in BUILTIN_DATASETS and not Path(str(name)).exists():
        log.info("recorded dataset %r is not available here; parity uses synthetic inputs", name)
        return None
    try:
        return load_data(name, seed=seed)
    except EdgetlError as e:
        log.warning("recorded dataset %r could not be loaded (%s); parity uses synthetic inputs", name, e)
        return None


def reference_outputs(source: Artifact, inputs: ParityInputs) -> np.ndarray:
    """The source PyTorch model's logits for ``inputs``."""
    import torch

    if source.format is not Format.TORCH or source.model is None:
        return run_artifact(source, inputs.batch)
    with torch.inference_mode():
        return source.model.eval()(torch.from_numpy(inputs.batch)).float().numpy()


def run_artifact(artifact: Artifact, batch: np.ndarray) -> np.ndarray:
    """Logits of any runnable artifact for a prepared batch (a static-batch model runs in chunks)."""
    from edgetl.runtimes import open_runtime as open_runner

    with open_runner(artifact, threads=None) as runner:
        fixed = runner.fixed_batch
        step = fixed or len(batch)
        outs = []
        for i in range(0, len(batch), step):
            chunk = batch[i : i + step]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            outs.append(np.asarray(runner.run(np.ascontiguousarray(chunk, dtype=np.float32)))[:n])
    return np.concatenate(outs).astype(np.float32)


def compare(reference: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """The parity metrics of ``outputs`` against ``reference`` (both N x classes)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(outputs, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"exported model outputs shape {tuple(out.shape)}, the source {tuple(ref.shape)}",
                          metrics={"reference_shape": list(ref.shape), "output_shape": list(out.shape)})
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise ParityError(f"exported model produced {bad} non-finite outputs (NaN/Inf) on the parity inputs",
                          metrics={"non_finite": bad, "samples": int(len(out))})
    diff = np.abs(out - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    agree = out.argmax(1) == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref], 1)
    margin = top2[:, 1] - top2[:, 0]
    ties = (~agree) & (margin <= 2 * max_abs)
    decisive = int((~agree & ~ties).sum())
    n = int(len(ref))
    return {
        "samples": n,
        "max_abs_error": max_abs,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "max_rel_error": max_abs / scale if scale > 0 else max_abs,
        "top1_agreement": float(agree.mean()) if n else 1.0,
        "near_ties": int(ties.sum()),
        "decisive_disagreements": decisive,
    }


def check_parity(source: Artifact, exported: Artifact, inputs: ParityInputs, *,
                 precision: Precision | str = "fp32", thresholds: ParityThresholds | None = None) -> dict[str, Any]:
    """Run ``exported`` and ``source`` on ``inputs``; return the metrics or raise :class:`ParityError`."""
    prec = Precision.parse(precision)
    runnable = _runnable(exported)
    if runnable is None:
        return {"checked": False, "reason": f"{exported.format.value} does not run on this machine",
                "inputs": inputs.source}
    if isinstance(inputs, ContractParityInputs):
        return _contract_parity(source, exported, runnable, inputs, prec, thresholds)
    if runnable is not exported:
        # What runs here is the bundle's ONNX: fp32, or int8 where it is Q/DQ, whatever the engine will use.
        qdq = bool(exported.history and exported.history[-1].options.get("qdq"))
        prec = Precision.INT8 if qdq else Precision.FP32
    limits = thresholds or THRESHOLDS[prec.value]
    metrics = compare(reference_outputs(source, inputs), run_artifact(runnable, inputs.batch))
    n = metrics["samples"]
    agreement_excl_ties = 1.0 - metrics["decisive_disagreements"] / n if n else 1.0
    metrics.update({"checked": True, "precision": prec.value, "inputs": inputs.source,
                    "runtime": _runtime_name(runnable),
                    "thresholds": {"max_rel_error": limits.max_rel_error,
                                   "min_top1_agreement": limits.min_top1_agreement}})
    if runnable is not exported:
        metrics["checked_file"] = str(runnable.path.name)
        metrics["note"] = (f"the {exported.format.value} engine is built on the device; this checks the ONNX it is "
                           "built from, with onnxruntime")
    failures = []
    if metrics["max_rel_error"] > limits.max_rel_error:
        failures.append(f"max relative error {metrics['max_rel_error']:.3g} > {limits.max_rel_error:g}")
    if agreement_excl_ties < limits.min_top1_agreement:
        failures.append(f"top-1 agreement {agreement_excl_ties:.3f} < {limits.min_top1_agreement:g}")
    if failures:
        raise ParityError(
            f"{exported.format.value} export of {source.name} does not match the source ({'; '.join(failures)}): "
            f"max abs error {metrics['max_abs_error']:.4g}, max rel error {metrics['max_rel_error']:.4g}, "
            f"top-1 agreement {metrics['top1_agreement']:.3f} on {n} inputs ({inputs.source})",
            metrics=metrics,
        )
    return metrics


def _runnable(art: Artifact) -> Artifact | None:
    """The artifact a runtime here can execute: itself, or its parity proxy (a TensorRT bundle's ONNX)."""
    if runs_here(art.format):
        return art
    proxy, inner = FORMAT_INFO[art.format].parity_proxy, art.extra.get("parity_proxy")
    if proxy is not None and inner:
        from dataclasses import replace

        bundle = art.path if art.path.is_dir() else art.path.parent
        return replace(art, format=proxy, path=bundle / inner)
    return None


def _runtime_name(art: Artifact) -> str:
    return FORMAT_INFO[art.format].runtime or "?"


# --------------------------------------------------------------------------- any model: every output
def _contract_inputs(artifact: Artifact, data: Any, count: int, seed: int) -> ContractParityInputs:
    from edgetl.contract_shapes import example_inputs
    from edgetl.inputs import InputSet

    if isinstance(data, InputSet):
        samples = tuple(dict(s) for s in data.samples[:count])
        return ContractParityInputs(samples, f"data: first {len(samples)} samples of {data.origin!r}")
    samples = tuple(example_inputs(artifact.contract, seed=seed + i) for i in range(count))
    return ContractParityInputs(samples, f"synthetic: {count} seeded random inputs at the contract's shapes (pass "
                                         "--data for real inputs)")


def _run_samples(art: Artifact, samples) -> list[dict[str, np.ndarray]]:
    from edgetl.runtimes import open_runtime

    with open_runtime(art, threads=None) as rt:
        return [rt.run_named(dict(s)) for s in samples]


def _contract_parity(source: Artifact, exported: Artifact, runnable: Artifact, inputs: ContractParityInputs,
                     prec: Precision, thresholds: ParityThresholds | None) -> dict[str, Any]:
    """Every output of the export against the source's (matched by position: a module's are output0..),
    with :func:`edgetl.fidelity.compare`; fails on any output's relative error over the precision's limit or the
    task's agreement metric under it."""
    from edgetl.fidelity import compare as fidelity_compare
    from edgetl.fidelity import headline

    contract = runnable.contract or exported.contract
    cand = _run_samples(runnable, inputs.samples)
    ref = _run_samples(source, inputs.samples)
    names = tuple(cand[0])
    if len(ref[0]) != len(names):
        raise ParityError(f"the export gives {len(names)} outputs ({', '.join(names)}), the source {len(ref[0])}",
                          metrics={"outputs": list(names), "source_outputs": list(ref[0])})
    ref = [dict(zip(names, r.values(), strict=True)) for r in ref]
    for r, c in zip(ref, cand, strict=True):
        for n in names:
            if np.shape(r[n]) != np.shape(c[n]):
                raise ParityError(f"output {n!r}: the export gives shape {tuple(np.shape(c[n]))}, the source "
                                  f"{tuple(np.shape(r[n]))}")
            if not np.isfinite(c[n]).all():
                raise ParityError(f"output {n!r}: the export produced non-finite values on the parity inputs")
    result = fidelity_compare(ref, cand, contract=contract)
    head = headline(result, contract.task)
    limits = thresholds or THRESHOLDS[prec.value]
    per = {o.output: o for o in result.outputs}
    max_abs = max(o.max_abs for o in result.outputs)
    max_rel = max(o.max_rel for o in result.outputs)
    metrics: dict[str, Any] = {
        "checked": True, "precision": prec.value, "inputs": inputs.source, "runtime": _runtime_name(runnable),
        "samples": len(inputs.samples), "max_abs_error": max_abs, "max_rel_error": max_rel,
        "top1_agreement": head.value if head.metric == "top1_agreement" else None,
        "headline": head.to_dict(), "fidelity": result.to_dict(),
        "thresholds": {"max_rel_error": limits.max_rel_error, "min_agreement": limits.min_top1_agreement}}
    failures = [f"output {n!r}: max relative error {o.max_rel:.3g} > {limits.max_rel_error:g}"
                for n, o in per.items() if o.max_rel > limits.max_rel_error]
    if head.metric != "snr_db" and head.value is not None and head.value < limits.min_top1_agreement:
        failures.append(f"{head.metric} of {head.output!r} {head.value:.3f} < {limits.min_top1_agreement:g}")
    if failures:
        raise ParityError(f"{exported.format.value} export of {source.name} does not match the source "
                          f"({'; '.join(failures)}) on {len(inputs.samples)} inputs ({inputs.source})",
                          metrics=metrics)
    return metrics
