"""What to package: the recommended artifact of an ``edgetl run`` directory, or one artifact file.

A run directory's ``report.json`` names the recommended artifact (role, file name, device); the bench stage's
``results.json`` holds the path it was measured from. The PyTorch model it was made from (the last prune or
distill stage's ``model.pt``, else the recipe's model) is the source its reference outputs come from.

Example::

    src = resolve("runs/demo")
    src.artifact_path, src.source_model, src.measured["p90_ms"]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, InputFileError

__all__ = ["PackageSource", "resolve"]

REPORT = "report.json"


@dataclass(frozen=True)
class PackageSource:
    """The artifact to ship, the fp32 PyTorch model it derives from (if known), and what the run measured."""

    artifact_path: Path
    source_model: Path | None = None
    data: str | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


def resolve(source: str | Path, *, source_model: str | Path | None = None, data: str | None = None,
            can_ship: Callable[[str], bool] = lambda fmt: True) -> PackageSource:
    """A run directory (with ``report.json``) or an artifact file / TensorRT bundle / OpenVINO directory.

    ``can_ship(format)`` says whether the target device takes a format; when the run's recommendation is not one
    it takes, the fastest artifact within the run's accuracy budget that is, is packaged instead (and the
    manifest says so).
    """
    path = Path(source)
    if not path.exists():
        raise InputFileError(f"nothing to package at {source}: give an `edgetl run` directory (with {REPORT}) or "
                             "a model file (.onnx, .xml, .ort, .pte, .pt)")
    given_source = Path(source_model) if source_model else None
    if given_source is not None and not given_source.exists():
        raise InputFileError(f"--source model not found: {source_model}")
    if path.is_dir() and (path / REPORT).exists():
        src = _from_run_dir(path, can_ship)
        return PackageSource(artifact_path=src.artifact_path, source_model=given_source or src.source_model,
                             data=data or src.data, measured=src.measured, run_dir=path)
    if path.is_dir() and not list(path.glob("*.xml")) and not (path / "build.sh").exists():
        raise InputFileError(f"{path} is a directory without {REPORT}: give an `edgetl run` directory or a model file")
    return PackageSource(artifact_path=path, source_model=given_source, data=data)


def _from_run_dir(run_dir: Path, can_ship: Callable[[str], bool]) -> PackageSource:
    try:
        report = json.loads((run_dir / REPORT).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(f"{run_dir / REPORT}: unreadable run report ({e}); rerun `edgetl run`") from None
    rec = report.get("recommendation") or {}
    if "role" not in rec:
        why = rec.get("line") or "the run has no bench stage, so nothing was measured and nothing recommended"
        raise ConfigError(f"{run_dir}: no recommended artifact ({why}); package one file instead: "
                          "edgetl package FILE --device ...")
    row = next((r for r in report.get("artifacts", []) if r.get("role") == rec["role"]
                and r.get("device") == rec.get("device")), {})
    note = None
    if not can_ship(rec.get("format", "")):
        row = _shippable(report, rec, can_ship)
        note = (f"the run recommends {rec['artifact']} ({rec.get('format')}), which this device does not take; "
                f"packaged {row['artifact']} ({row['format']}), the fastest within the run's accuracy budget that it "
                "does")
        rec = {**rec, "role": row["role"], "artifact": row["artifact"], "format": row["format"]}
    path = _measured_path(run_dir, report, rec)
    measured = {k: row.get(k) for k in ("role", "device", "artifact", "format", "runtime", "precision", "accuracy",
                                        "agreement", "p50_ms", "p90_ms", "p99_ms", "samples", "threads", "params",
                                        "flops", "size_bytes") if row.get(k) is not None}
    measured["teacher_accuracy"] = rec.get("teacher_accuracy")
    measured["recommendation"] = rec.get("line")
    measured["accuracy_budget_points"] = report.get("accuracy_budget_points")
    if note:
        measured["substituted"] = note
    if rec.get("settled") is False:  # contended timings that did not settle the choice: say so wherever it ships
        measured["unsettled"] = (f"the run's choice is UNSETTLED (its timings were contended): packaged the "
                                 f"provisional {rec['artifact']}; candidates {', '.join(rec.get('candidates') or [])}; "
                                 "rerun the bench stage on an idle machine, then package again")
    return PackageSource(artifact_path=path, source_model=_fp32_model(run_dir, report, rec["role"]),
                         data=report.get("data"), measured=measured)


def _shippable(report: dict[str, Any], rec: dict[str, Any], can_ship: Callable[[str], bool]) -> dict[str, Any]:
    rows = [r for r in report.get("artifacts", []) if r.get("device") == rec.get("device")
            and r.get("accuracy") is not None]
    budget = float(report.get("accuracy_budget_points") or 1.0)
    teacher = rec.get("teacher_accuracy")
    ok = [r for r in rows if can_ship(r["format"]) and teacher is not None
          and 100 * (teacher - r["accuracy"]) <= budget + 1e-9]
    if not ok:
        raise ConfigError(f"no artifact of the run is both within its accuracy budget and shippable to this device "
                          f"(recommended: {rec['artifact']}, {rec.get('format')}); package a file instead")
    return min(ok, key=lambda r: r["p90_ms"])


def _measured_path(run_dir: Path, report: dict[str, Any], rec: dict[str, Any]) -> Path:
    """The file the recommended row was measured from (results.json), found again inside the run directory."""
    recorded = None
    bench = next((s for s in report.get("stages", []) if s.get("stage") == "bench"), None)
    if bench is not None:
        results = Path(bench["directory"]) / "results.json"
        if not results.exists():
            results = run_dir / "stages" / Path(bench["directory"]).name / "results.json"
        if results.exists():
            for item in json.loads(results.read_text()):
                if item.get("role") == rec["role"] and item.get("device") == rec.get("device"):
                    recorded = item["result"].get("path")
                    break
    if rec["role"] == "teacher" and report.get("model") and Path(report["model"]).exists():
        return Path(report["model"])
    if recorded and Path(recorded).exists():
        return Path(recorded)
    # The run directory moved, or the file was written in a stage's staging directory: find it by name.
    name = Path(recorded).name if recorded else rec["artifact"]
    hits = [p for p in sorted((run_dir / "stages").rglob(name)) if not any(part.startswith(".") for part in
                                                                           p.relative_to(run_dir).parts)]
    if len(hits) == 1:
        return hits[0]
    role_dir = {"quantized": "quantized", "baseline:teacher-int8": "baseline-teacher-int8"}.get(rec["role"])
    narrowed = [p for p in hits if role_dir and role_dir in p.parts]
    if len(narrowed) == 1:
        return narrowed[0]
    raise InputFileError(f"{run_dir}: cannot find the recommended artifact {name!r} ({rec['role']}) "
                         f"{'among ' + str(len(hits)) + ' candidates' if hits else 'in stages/'}; package the "
                         "file itself: edgetl package FILE --device ...")


def _fp32_model(run_dir: Path, report: dict[str, Any], role: str) -> Path | None:
    """The PyTorch model the recommended artifact was made from."""
    teacher = Path(report["model"]) if report.get("model") and Path(report["model"]).exists() else None
    if role in ("teacher", "baseline:teacher-int8"):
        return teacher
    for s in reversed(report.get("stages", [])):
        if s.get("stage") in ("prune", "distill"):
            d = Path(s["directory"])
            d = d if d.exists() else run_dir / "stages" / d.name
            if (d / "model.pt").exists():
                return d / "model.pt"
    return teacher
