"""The contract path of ``edgetl quantize``: any model (several inputs or outputs, any task, unlabeled data),
calibrated from ``--data`` read by its contract and checked by label-free fidelity on every output.

Example::

    edgetl quantize vad.onnx --backend openvino --data vad.npz --min-snr 25 -o vad.int8.xml
    edgetl quantize det.onnx --backend openvino --task detection --role boxes:boxes:N,A,4:xyxy \\
        --role scores:scores --data det.npz --max-drop 2 -o det.int8.xml
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgetl.cli import contract_options as co

__all__ = ["load_for_quantize", "quantize_contract", "wants_contract"]


def load_for_quantize(model: str, *, arch: str | None, arch_args: str | None) -> Any:
    """The model, with ``--arch``/``--arch-args`` (bad JSON or an unknown module is one line, exit 2)."""
    return co.load_with_arch(model, arch=arch, arch_args=arch_args)


def unlabeled(data: str) -> bool:
    """Data that carries no labels: an image folder with no class folders, an ``.npz`` without ``x``/``y`` (arrays
    named after the inputs), or ``module:function``. A classifier calibrates from it by its contract too."""
    import numpy as np

    from edgetl.inputs import _IMAGE_SUFFIXES, _is_function_spec

    path = Path(data)
    if not path.exists():
        return _is_function_spec(data)
    if path.is_dir():
        return any(f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES for f in path.iterdir())
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return "x" not in z.files
        except (OSError, ValueError):
            return False  # the dataset loader names what is wrong with it
    return False


def wants_contract(art: Any, flags: Any, *, min_snr: float | None, data: str | None = None) -> bool:
    """Any contract flag or ``--min-snr``, unlabeled ``--data``, or a model that is not a one-input labelled
    classifier with an input spec: quantize by the contract. Otherwise the classifier path runs unchanged."""
    return (co.wants_contract(flags, art, reference=None, metric=None) or min_snr is not None
            or (data is not None and unlabeled(data)))


def quantize_contract(model: str, art: Any, cfg: Any, flags: Any, *, data: str, output: Path,
                      max_drop: float | None, min_snr: float | None) -> tuple[dict[str, Any], Any]:
    """Quantize ``art`` by its contract; ``max_drop`` is the user's own (None: the gate's default applies only to
    a task with an agreement metric). Returns (result, render)."""
    from edgetl.contract import Task
    from edgetl.inputs import load_inputs
    from edgetl.quantize import quantize
    from edgetl.stages import StageContext

    art = co.with_contract(art, flags)  # a contradiction with the file: one line, before any work
    contract = art.contract
    agreement = contract.task is not Task.GENERIC
    budget = cfg.max_drop if (max_drop is not None or (agreement and min_snr is None)) else None
    cfg = dataclasses.replace(cfg, max_drop=budget, min_snr=min_snr)
    inputs = load_inputs(data, contract=contract)
    q = quantize(art, cfg, data=inputs, ctx=StageContext(output=output))
    m = q.history[-1].metrics
    result = {"output": str(q.path), "model": model, "backend": cfg.backend.value, "precision": cfg.precision.value,
              "data": inputs.origin, "by_contract": True, "task": m["task"], "metric": m["metric"],
              "headline": m["headline"], "fidelity": m["fidelity"], "max_drop": m["max_drop"],
              "min_snr": m["min_snr"], "budget_met": m["budget_met"], "kept_float": m["kept_float"],
              "unquantizable": m["unquantizable"], "calibration": m["calibration"], "warnings": m["warnings"],
              "attempts": m["attempts"], "backend_info": m["backend_info"], "size_bytes": m.get("size_bytes"),
              "fp32_size_bytes": m.get("fp32_size_bytes"), "seconds": q.history[-1].seconds,
              **({"note": m["note"]} if m.get("note") else {})}

    def render(console):
        from edgetl.cli._common import table

        head = m["headline"]
        table(console, f"quantize {model} -> {cfg.backend.value} {cfg.precision.value} (task {m['task']})",
              ["headline", "value", "output", "budget met", "kept in float"],
              [[head["metric"], f"{head['value']:.4f}", head["output"], str(m["budget_met"]),
                ", ".join(k["layer"] for k in m["kept_float"]) or "-"]])
        table(console, "fidelity against fp32, every output", ["output", "cosine", "SNR dB", "max abs"],
              [[o["output"], _num(o["cosine"]), _num(o["snr_db"], 1), _num(o["max_abs"], 6)]
               for o in m["fidelity"]["outputs"]])
        for w in m["warnings"]:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
        if m.get("note"):
            console.print(f"note: {m['note']}", highlight=False)
        console.print(f"wrote {q.path}")

    return result, render


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
