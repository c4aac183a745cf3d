"""``edgetl package``: one directory per target device that carries its model, its runner and its own proof.

Layout::

    BUNDLE/model/...            the artifact(s) for the profile's runtime (TensorRT: ONNX + build.sh [+ engine])
    BUNDLE/manifest.json        inputs/outputs, preprocessing as data, labels, source hash, history, versions
    BUNDLE/labels.txt           one label per line, in output order
    BUNDLE/requirements.txt     the runtime, numpy, pillow (no torch, no edgetl)
    BUNDLE/run.py               preprocessing + inference + top-k, JSON out (not for phones: ANDROID.md instead)
    BUNDLE/reference/           reference images, their preprocessed tensor, the source model's outputs, a sample
    BUNDLE/README.md            the three commands that matter on the board
    BUNDLE/SHA256SUMS           every other file (``sha256sum -c SHA256SUMS``)

Example::

    b = package("runs/demo", "bundle-x86", device="x86-cpu")
    b.manifest["model"]["file"], b.path / "run.py"
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format
from edgetl.errors import ConfigError, ExportError
from edgetl.package import manifest as mf
from edgetl.package.reference import build_reference
from edgetl.package.source import PackageSource, resolve
from edgetl.package.targets import MOBILE_FORMATS, RUNNER_RUNTIMES, board_facts, requirements_for

__all__ = ["Bundle", "package", "sha256"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
RUNNER = "run.py"


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    files: list[str]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an output path that cannot become the bundle, before any work (the checks every ``-o`` gets)."""
    from edgetl.fileio import check_output as check_path

    check_path(out, kind="dir", overwrite=overwrite)


def package(source: str | Path, out: str | Path, *, device: str = "x86-cpu", data: str | None = None,
            source_model: str | Path | None = None, opset: int | None = None, overwrite: bool = False,
            reference_count: int = 8, sample_count: int = 200) -> Bundle:
    """Build the bundle for ``device`` from a run directory or an artifact file (written atomically)."""
    from benchmarks.profiles import load_profile
    from edgetl.fileio import atomic_dir

    out = Path(out)
    profile = load_profile(device)
    check_output(out, overwrite=overwrite)
    if opset is not None and not 7 <= int(opset) <= 30:
        raise ConfigError(f"--opset must be an ONNX opset between 7 and 30, got {opset}")
    if reference_count < 1 or sample_count < 1:
        raise ConfigError("reference and sample counts must be at least 1")
    src = resolve(source, source_model=source_model, data=data, can_ship=lambda f: _ships(f, profile))
    art, source_art = _load(src)
    splits = _dataset(src, art)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shipped, runs, mobile = _deliverables(art, profile, tmp, splits, opset=opset)
        ref = build_reference(shipped, source_art, splits, tmp, count=reference_count, sample=sample_count,
                              precision=mf.precision_of(shipped))
        files = {"manifest": _manifest(src, art, source_art, shipped, runs, profile, ref, mobile)}
        _write_texts(tmp, files["manifest"], profile, mobile)
        listed = _write_sums(tmp)
        _readable(tmp)
    return Bundle(path=out, manifest=files["manifest"], files=listed)


# --------------------------------------------------------------------------- inputs
def _load(src: PackageSource) -> tuple[Artifact, Artifact | None]:
    from edgetl.models import load_model

    art = load_model(src.artifact_path)
    source_art = None
    if src.source_model is not None:
        source_art = load_model(src.source_model)
        if source_art.format is not Format.TORCH:
            raise ConfigError(f"--source must be the PyTorch model the artifact was made from, not a "
                              f"{source_art.format.value} file")
        if source_art.labels != art.labels:
            raise ConfigError(f"source model {src.source_model} has {len(source_art.labels)} labels, the artifact "
                              f"{len(art.labels)}: they are not the same model")
    elif art.format is Format.TORCH:
        source_art = art
    return art, source_art


def _dataset(src: PackageSource, art: Artifact):
    from edgetl.data import check_classes, load_data

    name, seed = src.data, 0
    if name is None:
        name = art.extra.get("data")
        for rec in reversed(art.history):
            if rec.options.get("data"):
                name, seed = rec.options["data"], int(rec.options.get("split_seed", 0) or 0)
                break
    if not name:
        raise ConfigError(f"{art.name} records no dataset for the reference images and the fidelity sample; pass "
                          "--data (a built-in name, an image folder or an .npz)")
    splits = load_data(name, seed=seed)
    check_classes(art.labels, splits)
    return splits


# --------------------------------------------------------------------------- what ships
def _deliverables(art: Artifact, profile, tmp: Path, splits, *, opset: int | None):
    """(shipped artifact, run.py's runtimes in order of preference, mobile?) for ``profile``."""
    facts = board_facts(profile.name)
    model_dir = tmp / "model"
    wants_trt = Format.TENSORRT_BUNDLE in profile.formats or Format.TENSORRT in profile.formats
    mobile = profile.formats[0] in MOBILE_FORMATS
    if art.format in (Format.TENSORRT, Format.TENSORRT_BUNDLE):
        raise ConfigError(f"{art.name} is already a TensorRT {art.format.value}; package the ONNX it was built from")
    if wants_trt and art.format in (Format.TORCH, Format.ONNX):
        onnx_art = _onnx_at(art, tmp, splits, opset or facts.max_onnx_opset)
        from exporters.tensorrt import export_tensorrt

        trt = export_tensorrt(onnx_art, model_dir)
        engine = trt.extra["engine"]
        runs = [{"file": f"model/{engine}", "runtime": "tensorrt", "missing": "built on the board by model/build.sh"},
                {"file": f"model/{trt.extra['onnx']}", "runtime": "onnxruntime",
                 "note": "the ONNX the engine is built from, on the CPU: for checks where the engine is not built"}]
        shipped = dataclasses.replace(onnx_art, path=model_dir / trt.extra["onnx"])
        return shipped, runs, False
    if mobile:
        shipped = _mobile(art, profile, model_dir, splits)
        return shipped, [], True
    usable = [f for f in profile.formats if f in RUNNER_RUNTIMES and RUNNER_RUNTIMES[f] in profile.runtimes
              and f is not Format.TENSORRT]
    if art.format in usable:
        shipped = _copy(art, model_dir)
    elif art.format is Format.TORCH and usable:
        shipped = _export(art, usable[0].value, model_dir, splits)
    else:
        raise ConfigError(f"a {art.format.value} artifact does not run on {profile.name} (it runs "
                          f"{', '.join(f.value for f in usable) or 'nothing run.py supports'}); export the PyTorch "
                          "model to one of these, or package for another --device")
    return shipped, [{"file": f"model/{shipped.path.name}", "runtime": RUNNER_RUNTIMES[shipped.format]}], False


def _ships(fmt: str, profile) -> bool:
    """Whether :func:`_deliverables` makes a bundle for ``profile`` from a ``fmt`` artifact."""
    try:
        f = Format.parse(fmt)
    except Exception:  # noqa: BLE001 - an unknown format in a report ships nowhere
        return False
    if Format.TENSORRT_BUNDLE in profile.formats or Format.TENSORRT in profile.formats:
        return f in (Format.TORCH, Format.ONNX)
    if profile.formats[0] in MOBILE_FORMATS:
        return f in (*MOBILE_FORMATS, Format.ONNX, Format.TORCH)
    return f is Format.TORCH or (f in RUNNER_RUNTIMES and f in profile.formats and f is not Format.TENSORRT
                                 and RUNNER_RUNTIMES[f] in profile.runtimes)


def _mobile(art: Artifact, profile, model_dir: Path, splits) -> Artifact:
    if art.format in MOBILE_FORMATS:
        return _copy(art, model_dir)
    if art.format is Format.ONNX and Format.ORT in profile.formats:
        return _export(art, "ort", model_dir, splits)
    if art.format is Format.TORCH and Format.EXECUTORCH in profile.formats:
        return _export(art, "executorch", model_dir, splits)
    raise ConfigError(f"a {art.format.value} artifact does not ship to {profile.name}: give the PyTorch model "
                      "(exported to ExecuTorch) or an ONNX file (converted to the ORT format)")


def _copy(art: Artifact, model_dir: Path) -> Artifact:
    from benchmarks.remote import companion_files

    model_dir.mkdir(parents=True, exist_ok=True)
    for f in companion_files(Path(art.path)):
        shutil.copyfile(f, model_dir / f.name)
    return dataclasses.replace(art, path=model_dir / Path(art.path).name)


def _export(art: Artifact, fmt: str, model_dir: Path, splits, **options) -> Artifact:
    from exporters.base import export

    [out] = export(art, fmt, model_dir, options=options, data=splits, overwrite=True, name="model")
    (model_dir / "export.json").unlink(missing_ok=True)
    return out


def _onnx_at(art: Artifact, tmp: Path, splits, max_opset: int | None) -> Artifact:
    """An ONNX the board's TensorRT parses: exported at ``max_opset``, or an existing ONNX converted down."""
    from exporters.onnx import DEFAULT_OPSET

    work = tmp / ".work"
    if art.format is Format.TORCH:
        return _export(art, "onnx", work, splits, opset=max_opset or DEFAULT_OPSET)
    import onnx

    proto = onnx.load(str(art.path))
    have = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if max_opset is None or have is None or have <= max_opset:
        return art
    from onnx import version_converter

    try:
        lowered = version_converter.convert_version(proto, int(max_opset))
        onnx.checker.check_model(lowered)
    except Exception as e:  # noqa: BLE001 - the converter raises assorted errors for unsupported adapters
        raise ExportError(f"{art.name} is ONNX opset {have} and the board's TensorRT parses up to {max_opset}; "
                          f"converting it down failed ({str(e).splitlines()[0][:200]}); re-export the PyTorch "
                          f"model with --opset {max_opset} (and quantize that)") from None
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{art.path.stem}.onnx"
    onnx.save(lowered, str(path))
    lowered_art = dataclasses.replace(art, path=path)
    _same_outputs(art, lowered_art, splits)
    return lowered_art


def _same_outputs(a: Artifact, b: Artifact, splits) -> None:
    from edgetl.data import prepare
    from exporters.parity import compare, run_artifact

    x = prepare(splits.test.images[:16], a.input_spec).numpy()
    m = compare(run_artifact(a, x), run_artifact(b, x))
    if m["max_rel_error"] > 1e-4 or m["top1_agreement"] < 1.0:
        raise ExportError(f"the opset-converted {b.name} computes something else than {a.name} (max rel error "
                          f"{m['max_rel_error']:.3g}); re-export the PyTorch model at the board's opset instead")


# --------------------------------------------------------------------------- manifest and texts
def _manifest(src: PackageSource, art: Artifact, source_art: Artifact | None, shipped: Artifact, runs, profile,
              ref: dict[str, Any], mobile: bool) -> dict[str, Any]:
    sig = mf.io_signature(shipped.path, shipped.format, shipped.input_spec, shipped.num_classes)
    versions = mf.versions()
    runtimes = [r["runtime"] for r in runs] or [_mobile_runtime(shipped)]
    facts = board_facts(profile.name)
    source_file = (Path(src.source_model) if src.source_model
                   else src.artifact_path if art.format is Format.TORCH else None)
    return {
        "schema": mf.MANIFEST_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"profile": profile.name, "description": profile.description, "arch": profile.arch,
                   "accelerator": profile.accelerator.value,
                   **{k: v for k, v in dataclasses.asdict(facts).items() if v}},
        "model": {"file": str(shipped.path.relative_to(shipped.path.parents[1])), "format": shipped.format.value,
                  "runtime": runtimes[0], "precision": mf.precision_of(shipped), "arch": shipped.arch,
                  "sha256": sha256(shipped.path), "packaged_from": str(src.artifact_path)},
        "runs": runs,
        "mobile": mobile,
        "task": "classification" if sig["outputs"] and sig["outputs"][0]["shape"][-1:] == [shipped.num_classes]
        else "raw",
        **sig,
        "preprocessing": mf.preprocessing(shipped.input_spec),
        "labels": list(shipped.labels),
        "source": {"file": str(source_file) if source_file else None,
                   "sha256": sha256(source_file) if source_file and source_file.is_file() else None,
                   "artifact_sha256": sha256(src.artifact_path) if src.artifact_path.is_file() else None,
                   "note": None if source_art is not None else "no PyTorch source given: reference outputs are the "
                   "shipped artifact's own, run on the packaging machine"},
        "history": mf.history(art),
        "measured": _measured(src.measured, shipped),
        "reference": ref,
        "versions": versions,
        "requirements": requirements_for(runtimes, versions, mobile=mobile),
    }


def _measured(measured: dict[str, Any], shipped: Artifact) -> dict[str, Any] | None:
    """The run's figures for the recommended artifact, flagged when the bundle ships another format of it."""
    if not measured:
        return None
    out = dict(measured)
    if measured.get("format") and measured["format"] != shipped.format.value:
        out["note"] = (f"measured as {measured['format']} in {measured.get('runtime')}; this bundle ships its "
                       f"{shipped.format.value} export, whose own latency `edgetl verify` measures")
    return out


def _mobile_runtime(art: Artifact) -> str:
    return "executorch" if art.format is Format.EXECUTORCH else "onnxruntime"


def _write_texts(tmp: Path, manifest: dict[str, Any], profile, mobile: bool) -> None:
    from edgetl.fileio import write_json
    from edgetl.package.texts import android_note, board_readme, engine_readme

    write_json(tmp / MANIFEST, manifest)
    (tmp / "labels.txt").write_text("".join(f"{lab}\n" for lab in manifest["labels"]), encoding="utf-8")
    (tmp / "requirements.txt").write_text("\n".join(manifest["requirements"]) + "\n", encoding="utf-8")
    if mobile:
        (tmp / "ANDROID.md").write_text(android_note(manifest), encoding="utf-8")
    else:
        shutil.copyfile(Path(__file__).with_name("board_runner.py"), tmp / RUNNER)
    (tmp / "README.md").write_text(board_readme(manifest, profile), encoding="utf-8")
    if any(r["runtime"] == "tensorrt" for r in manifest["runs"]):
        (tmp / "model" / "README.md").write_text(engine_readme(manifest), encoding="utf-8")
    shutil.rmtree(tmp / ".work", ignore_errors=True)


def _write_sums(tmp: Path) -> list[str]:
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    files = [f for f in files if f != SUMS]
    (tmp / SUMS).write_text("".join(f"{sha256(tmp / f)}  {f}\n" for f in files), encoding="utf-8")
    return [*files, SUMS]


def _readable(root: Path) -> None:
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        executable = p.is_dir() or p.suffix in (".sh",) or p.name == RUNNER
        p.chmod((0o777 if executable else 0o666) & ~mask)

