"""``edgetl verify`` and ``edgetl predict``: the bundle's runner on the device, checked against its own proof.

Verification, here or on a board over SSH (the bundle is copied with ``ssh ... tar``; the board needs only the
bundle's ``requirements.txt``, no edgetl): the checksums (a changed, missing or added file fails, named), then
``run.py --check`` on the device, which preprocesses the reference images (must equal ``reference/inputs.npy``
within 1e-5), runs them (outputs must match the source model's within the tolerance of the shipped precision),
predicts the fidelity sample (the user's ``--data`` or the bundled one) and times single-stream calls with the
harness's procedure (warm-up, then a minimum count AND time). The latency statistics are the harness's
(:class:`benchmarks.stats.LatencyStats`) and the result goes to the results store under the device, with
"verified on DEVICE" in its accuracy source.

Example::

    r = verify_bundle("bundle-x86")
    r.line                       # "verified on x86-cpu: reference outputs ..., p90 0.41 ms"
"""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import ConfigError, EdgetlError, InputFileError, RemoteError

__all__ = ["Check", "VerifyError", "VerifyResult", "predict", "verify_bundle"]

PREPROCESS_TOLERANCE = 1e-5


class VerifyError(EdgetlError):
    """A bundle that fails its checksums or its checks on the device."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    bundle: Path
    device: str
    host: str
    checks: list[Check]
    fidelity: dict[str, Any]
    parity: dict[str, Any]
    result: Any = None  # the BenchResult stored
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    on_device: bool = True  # False for a phone bundle checked on this machine

    @property
    def line(self) -> str:
        where = "" if self.host == "local" else f" ({self.host})"
        lat = f", p90 {self.result.latency_ms.p90:.3f} ms" if self.result is not None else ""
        head = (f"verified on {self.device}{where}" if self.on_device else
                f"checked on this machine, NOT on {self.device} (a phone bundle runs in the app)")
        return f"{head}: " + "; ".join(c.detail for c in self.checks) + lat

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "device": self.device, "host": self.host, "ok": self.ok,
                "line": self.line, "checks": [dataclasses.asdict(c) for c in self.checks],
                "fidelity": self.fidelity, "parity": self.parity, "runner": self.runner, "on_device": self.on_device,
                "result": self.result.to_dict() if self.result is not None else None}


def read_manifest(bundle: Path) -> dict[str, Any]:
    if not bundle.is_dir():
        raise InputFileError(f"bundle not found: {bundle} (make one with `edgetl package`)")
    try:
        return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{bundle} is not an edgetl bundle (no manifest.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise VerifyError(f"{bundle}/manifest.json is unreadable ({e}); re-package the bundle") from None


def check_checksums(bundle: Path) -> None:
    from edgetl.package.board_runner import check_sums

    if not (bundle / "SHA256SUMS").exists():
        raise VerifyError(f"{bundle} has no SHA256SUMS; re-package the bundle")
    bad = check_sums(bundle)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise VerifyError(f"bundle {bundle} fails its checksums: {bad[0]}{more}; re-package it or restore the file")


# --------------------------------------------------------------------------- verify
def verify_bundle(bundle: str | Path, *, host: str | None = None, data: str | None = None, device: str | None = None,
                  ssh_config: str | None = None, port: int | None = None, python: str | None = None,
                  threads: int | None = None, bench=None, store=None, sample_size: int = 200,
                  connect_timeout_s: int | None = None, run_id: str | None = None) -> VerifyResult:
    """Verify ``bundle`` on this machine, or on ``host`` over SSH; store the result when ``store`` is given."""
    from benchmarks.harness import BenchConfig

    bundle = Path(bundle)
    man = read_manifest(bundle)
    profile = _profile(device or man["device"]["profile"])
    if man.get("mobile") and host:
        raise ConfigError("a phone bundle has no run.py to run over SSH; check it in the app with the reference "
                          "data (ANDROID.md), or verify it here without --host")
    check_checksums(bundle)
    b = profile.bench
    bench = bench or BenchConfig(threads=threads if threads is not None else profile.threads, warmup_s=b.warmup_s,
                                 warmup_runs=b.warmup_runs, min_time_s=b.min_time_s, min_count=b.min_count,
                                 max_time_s=b.max_time_s)
    with tempfile.TemporaryDirectory(prefix="edgetl-verify-") as tmp:
        sample = _user_sample(man, bundle, data, Path(tmp), sample_size) if data else None
        if man.get("mobile"):
            payload = _mobile_payload(man, bundle, sample)
        else:
            args = ["--check", "--min-count", str(bench.min_count), "--min-time", str(bench.min_time_s),
                    "--warmup-s", str(bench.warmup_s), "--warmup-runs", str(bench.warmup_runs), "--max-time",
                    str(bench.max_time_s), *(["--threads", str(bench.threads)] if bench.threads else [])]
            if host:
                payload = _run_remote(bundle, host, profile, args, sample, python=python or "python3",
                                      ssh_config=ssh_config, port=port, connect_timeout_s=connect_timeout_s)
            else:
                payload = _run_local(bundle, args, sample, python=python or sys.executable)
    result = _judge(bundle, man, profile, payload, sample, host or "local", bench)
    if not result.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
        raise VerifyError(f"{bundle} does not verify on {profile.name} ({host or 'local'}): {failed}")
    if store is not None and result.result is not None:
        store.add(result.result, run_id=run_id or time.strftime("verify-%Y%m%d-%H%M%S"))
    return result


def _profile(name: str):
    from benchmarks.profiles import load_profile

    return load_profile(name)


def _user_sample(man: dict[str, Any], bundle: Path, data: str, tmp: Path, n: int) -> dict[str, Any]:
    """A sample of the user's data as uint8 images, with the reference top-1 computed on this machine."""
    from edgetl.data import load_data

    splits = load_data(data, seed=0)
    if splits.num_classes != len(man["labels"]):
        raise ConfigError(f"--data {data} has {splits.num_classes} classes, the bundle's model {len(man['labels'])}")
    test = splits.test if len(splits.test) else splits.train
    k = min(n, len(test))
    x, y = test.images[:k], test.labels[:k].numpy()
    ref_pred, ref_from = _reference_predictions(man, bundle, x)
    path = tmp / "sample.npz"
    np.savez_compressed(path, x=x.numpy().astype(np.uint8), y=y.astype(np.int64))
    return {"path": path, "y": y, "ref_pred": ref_pred, "ref_from": ref_from,
            "name": f"{splits.name}/{'test' if len(splits.test) else 'train'}[0:{k}]"}


def _reference_predictions(man: dict[str, Any], bundle: Path, images) -> tuple[np.ndarray, str]:
    from edgetl.evaluate import predict as edgetl_predict
    from edgetl.models import load_model
    from edgetl.package.bundle import sha256

    src = man["source"]
    if src.get("file") and Path(src["file"]).is_file() and sha256(Path(src["file"])) == src.get("sha256"):
        return edgetl_predict(load_model(src["file"]), images).argmax(1), f"source model {Path(src['file']).name}"
    art = load_model(bundle / man["model"]["file"])
    return edgetl_predict(art, images).argmax(1), f"the same {man['model']['format']} file on the verifying machine"


def _parse(stdout: str, stderr: str, rc: int, where: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (stderr.strip().splitlines() or [f"exit {rc}"])[-1]
    hint = " (install the bundle's requirements there: pip install -r requirements.txt)" if "No module" in stderr else ""
    raise VerifyError(f"run.py on {where} gave no result: {tail[:300]}{hint}")


def _run_local(bundle: Path, args: list[str], sample, *, python: str) -> dict[str, Any]:
    from edgetl.package.bundle import sha256

    ours = Path(__file__).with_name("board_runner.py")
    if sha256(bundle / "run.py") != sha256(ours):
        raise VerifyError(f"{bundle}/run.py is not the runner this edgetl ships (edited, or packaged by another "
                          "edgetl version): it is not run here; re-package the bundle, or verify it on the board "
                          "with --host")
    if sample is not None:
        args = [*args, "--sample", str(sample["path"])]
    r = subprocess.run([*shlex.split(python), "run.py", *args], cwd=bundle, capture_output=True, text=True)
    return _parse(r.stdout, r.stderr, r.returncode, "this machine")


def _run_remote(bundle: Path, host: str, profile, args: list[str], sample, *, python: str, ssh_config, port,
                connect_timeout_s) -> dict[str, Any]:
    from benchmarks.remote import SshTarget

    target = SshTarget.from_profile(host, profile, ssh_config=ssh_config, port=port,
                                    connect_timeout_s=connect_timeout_s)
    run_dir = f"{target.workdir.rstrip('/')}/verify-{time.strftime('%Y%m%d-%H%M%S')}-{bundle.name}"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tf:
        tf.add(bundle, arcname="bundle", filter=lambda t: None if "__pycache__" in t.name else t)
        if sample is not None:
            tf.add(sample["path"], arcname="sample.npz")
    q = shlex.quote(run_dir)
    _ssh(target, f"mkdir -p {q} && tar -xzf - -C {q}", during="copying the bundle", stdin=archive.getvalue())
    extra = ["--sample", "../sample.npz"] if sample is not None else []
    try:
        r = _ssh(target, f"cd {q}/bundle && {python} run.py {shlex.join([*args, *extra])}", during="running run.py")
    finally:
        try:
            _ssh(target, f"rm -rf {q}", during="cleaning up")
        except RemoteError:
            pass
    return _parse(r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"), r.returncode, host)


def _ssh(target, command: str, *, during: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(target.ssh_argv(command), input=stdin if stdin is not None else b"", capture_output=True,
                           timeout=target.command_timeout_s)
    except FileNotFoundError:
        raise RemoteError("`ssh` is not installed here; install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{during} on {target.host} timed out") from None
    if r.returncode == 255:
        err = r.stderr.decode(errors="replace").strip()
        low, last = err.lower(), (err.splitlines() or [""])[-1]
        if "host key" in low:
            raise RemoteError(f"host key of {target.host} is not known or does not match ({last}); check it with a "
                              f"plain `ssh {target.host}` first (edgetl never accepts host keys itself)")
        if "permission denied" in low:
            raise RemoteError(f"{target.host} refused the SSH login ({last}); check the user and your key")
        raise RemoteError(f"cannot reach {target.host} while {during} ({last or 'exit 255'})")
    if r.returncode != 0 and during == "copying the bundle":
        raise RemoteError(f"{during} to {target.host} failed: {r.stderr.decode(errors='replace').strip()[-300:]}")
    return r


def _mobile_payload(man: dict[str, Any], bundle: Path, sample) -> dict[str, Any]:
    """A phone bundle checked on this machine with edgetl's own runner for its format."""
    from edgetl.evaluate import predict as edgetl_predict
    from edgetl.models import load_model
    from edgetl.package.board_runner import preprocess
    from exporters.parity import run_artifact

    art = load_model(bundle / man["model"]["file"])
    ref = man["reference"]
    x = preprocess([bundle / p for p in ref["images"]], man["preprocessing"])
    stored = np.load(bundle / ref["inputs"])
    images = np.load(sample["path"])["x"] if sample else np.load(bundle / ref["sample"])["x"]
    import torch

    preds = edgetl_predict(art, torch.from_numpy(images)).argmax(1)
    return {"bad_files": [], "preprocess_max_abs_diff": float(np.abs(x - stored).max()),
            "reference_outputs": run_artifact(art, x).tolist(), "sample_predictions": preds.tolist(),
            "runtime": man["model"]["runtime"], "model": man["model"]["file"],
            "note": "checked on this machine with edgetl's runner, not on the phone", "environment": {}}


# --------------------------------------------------------------------------- judging
def _judge(bundle: Path, man: dict[str, Any], profile, payload: dict[str, Any], sample, host: str,
           bench) -> VerifyResult:
    ref = man["reference"]
    on_device = not man.get("mobile")
    checks = [Check("checksums on the device" if on_device else "checksums", not payload["bad_files"],
                    "checksums ok" if not payload["bad_files"] else payload["bad_files"][0])]
    d = payload["preprocess_max_abs_diff"]
    checks.append(Check("preprocessing", d <= PREPROCESS_TOLERANCE,
                        f"preprocessing max abs diff {d:.2g} (<= {PREPROCESS_TOLERANCE:g})"))
    got = np.asarray(payload["reference_outputs"], dtype=np.float32)
    tol = ref["tolerance"]
    parity, more = _output_checks(bundle, ref, got, tol)
    checks += more
    fidelity = _fidelity(bundle, ref, payload, sample)
    checks.append(Check("fidelity", fidelity["agreement"] >= tol["min_top1_agreement"],
                        f"fidelity on {fidelity['samples']} images of {fidelity['data']}: top-1 "
                        f"{100 * fidelity['accuracy']:.2f} %, agreement with {fidelity['reference']} "
                        f"{100 * fidelity['agreement']:.2f} %"))
    runner = {k: payload.get(k) for k in ("model", "runtime", "runtime_version", "note") if payload.get(k)}
    runner.update({"verified_on": profile.name, "bundle": str(bundle), "checks": [dataclasses.asdict(c) for c in checks]})
    result = _bench_result(man, profile, payload, host, bench, fidelity, runner, parity) if payload.get("latency") else None
    if not on_device:
        runner["verified_on"] = None
        runner["checked_on"] = "the verifying machine"
    return VerifyResult(bundle=bundle, device=profile.name, host=host, checks=checks, fidelity=fidelity,
                        parity=parity, result=result, runner=runner, on_device=on_device)


def _agreement(m: dict[str, Any]) -> float:
    """Top-1 agreement with near ties (margin within the measured error) not counted against it."""
    n = m["samples"]
    return 1.0 - m["decisive_disagreements"] / n if n else 1.0


def _output_checks(bundle: Path, ref: dict[str, Any], got: np.ndarray, tol: dict[str, float]):
    """The device's reference outputs against the same file on the packaging machine (the format's tolerance
    on values and decisions) and against the source model (decisions: an int8 file's logits move away from its
    fp32 source by design, on any machine)."""
    from exporters.parity import compare

    checks = []
    source = compare(np.load(bundle / ref["source_outputs"]), got)
    parity: dict[str, Any] = {"vs_source": source}
    limit = f"(<= {tol['max_rel_error']:g} for {ref['precision']})"
    if ref.get("artifact_outputs"):
        same = compare(np.load(bundle / ref["artifact_outputs"]), got)
        parity["vs_packaging_machine"] = same
        ok = same["max_rel_error"] <= tol["max_rel_error"] and _agreement(same) >= tol["min_top1_agreement"]
        checks.append(Check("reference outputs", ok, f"reference outputs vs the same file on the packaging machine: "
                            f"max rel error {same['max_rel_error']:.3g} {limit}, top-1 {same['top1_agreement']:.3f}"))
        checks.append(Check("source decisions", _agreement(source) >= tol["min_top1_agreement"],
                            f"vs {ref['outputs_from']}: top-1 {source['top1_agreement']:.3f} (>= "
                            f"{tol['min_top1_agreement']:g}), max rel error {source['max_rel_error']:.3g}"))
    else:
        ok = source["max_rel_error"] <= tol["max_rel_error"] and _agreement(source) >= tol["min_top1_agreement"]
        checks.append(Check("reference outputs", ok, f"reference outputs vs {ref['outputs_from']}: max rel error "
                            f"{source['max_rel_error']:.3g} {limit}, top-1 {source['top1_agreement']:.3f}"))
    parity.update({k: (parity.get("vs_packaging_machine") or source)[k]
                   for k in ("max_abs_error", "max_rel_error", "top1_agreement")})
    return parity, checks


def _fidelity(bundle: Path, ref: dict[str, Any], payload: dict[str, Any], sample) -> dict[str, Any]:
    pred = np.asarray(payload["sample_predictions"], dtype=np.int64)
    if sample is not None:
        y, ref_pred, ref_from, name = sample["y"], sample["ref_pred"], sample["ref_from"], sample["name"]
    else:
        with np.load(bundle / ref["sample"]) as z:
            y, ref_pred = z["y"], z["source_pred"]
        ref_from, name = "the source model (bundled predictions)", f"the bundled sample ({ref['dataset']})"
    if len(pred) != len(y):
        raise VerifyError(f"run.py returned {len(pred)} predictions for {len(y)} sample images")
    return {"samples": int(len(y)), "data": name, "accuracy": float((pred == y).mean()),
            "reference_accuracy": float((ref_pred == y).mean()), "agreement": float((pred == ref_pred).mean()),
            "drop_points": float(100 * ((ref_pred == y).mean() - (pred == y).mean())), "reference": ref_from}


def _bench_result(man, profile, payload, host, bench, fidelity, runner, parity):
    from benchmarks.harness import BenchResult
    from benchmarks.stats import LatencyStats

    lat = payload["latency"]
    samples = lat["samples_ns"]
    stats = LatencyStats.from_ns(samples)
    warnings = []
    bg = lat.get("background_load_cores")
    if bg is not None and bg > 0.25:
        warnings.append(f"other processes used {bg:.1f} cores while this was timed: the latency is inflated; "
                        "measure on an idle board")
    if len(samples) < bench.min_count:
        warnings.append(f"only {len(samples)} calls within max_time_s={bench.max_time_s} (asked for {bench.min_count})")
    if payload.get("note"):
        warnings.append(payload["note"])
    model = man["model"]
    return BenchResult(
        artifact=Path(payload.get("model") or model["file"]).name, path=str(man["model"]["file"]),
        format=model["format"], runtime=payload.get("runtime") or model["runtime"], precision=model["precision"],
        batch=1, threads=bench.threads, latency_ms=stats, throughput=len(samples) / (sum(samples) / 1e9),
        device=profile.name, host=host, accuracy=fidelity["accuracy"],
        accuracy_source=f"verified on {profile.name}: {fidelity['samples']} images of {fidelity['data']}",
        inputs=f"bundle reference images ({len(man['reference']['images'])})", tool="edgetl-bundle",
        runner={**runner, "fidelity": fidelity, "parity": {k: parity[k] for k in ("max_abs_error", "max_rel_error",
                                                                                "top1_agreement")},
                "warmup_calls": lat.get("warmup_calls")},
        config=bench.to_dict(), env={**payload.get("environment", {}), "background_load_cores": bg,
                                     "versions_packaged": man.get("versions")},
        artifact_meta={"bundle_model_sha256": model["sha256"], "source_sha256": man["source"].get("sha256"),
                       "stages": [h["stage"] for h in man.get("history", [])],
                       "input_shape": man["inputs"][0]["shape"] if man.get("inputs") else None},
        warnings=warnings)


# --------------------------------------------------------------------------- predict
def predict(target: str | Path, images: list[str | Path], *, top_k: int = 5, threads: int | None = None) -> dict[str, Any]:
    """The bundle's ``run.py`` (or, for a model file, the same preprocessing and top-k) on ``images``."""
    from edgetl.package import board_runner as br

    target = Path(target)
    if not images:
        raise ConfigError("give at least one image to predict")
    for p in images:
        if not Path(p).is_file():
            raise InputFileError(f"image not found: {p}")
    try:
        if target.is_dir() and (target / "manifest.json").exists():
            read_manifest(target)
            if not (target / "run.py").exists():
                raise InputFileError(f"{target} has no run.py (a phone bundle: see its ANDROID.md)")
            # This edgetl's own copy of the runner, on the bundle's files: nothing from the bundle runs as code here.
            m = br.Model(target, threads=threads)
            return {**m.describe(), "bundle": str(target),
                    "results": [{"image": str(p), **r} for p, r in zip(images, m.predict(images, top_k=top_k),
                                                                         strict=True)]}
        from edgetl.models import load_model
        from edgetl.package.manifest import preprocessing
        from exporters.parity import run_artifact

        art = load_model(target)
        x = br.preprocess(images, preprocessing(art.input_spec))
        logits = run_artifact(art, x)
    except OSError as e:
        raise InputFileError(f"cannot read image: {e}") from None
    except RuntimeError as e:  # run.py's "cannot run this bundle: <runtime> is not installed ..."
        from edgetl.errors import ModelError

        raise ModelError(str(e)) from None
    return {"model": str(target), "runtime": art.format.value,
            "results": [{"image": str(p), "top": br.top_classes(row, list(art.labels), top_k)}
                        for p, row in zip(images, logits, strict=True)]}

