"""Latency-budgeted LRP against FLOPs-targeted LRP, on OpenVINO int8 measured here (issue #15, "Done when").

Sections, cheapest first (``--sections s1,s2,s3``); each writes ``benchmarks/results/latprune.{json,md,png}``
when it finishes (a partial run leaves honest results; sections already in the JSON are kept):

S1. The demo teacher (EfficientNet-Lite0 fine-tuned on mnist5k) at 64x64: the teacher's NNCF int8 as the
    baseline; LRP at ``--flops`` FLOPs targets; LRP at measured int8 p50 targets (the FLOPs points' p50s and
    ``--lower`` fractions of the fastest); the same recovery for every pruned point, the same int8 path, test
    accuracy; all int8 IRs measured in interleaved rounds on a quiet machine; the issue's checks (a) and (b).
S2. The same at 160x160 on a teacher fine-tuned at 160 (``edgetl finetune --resolution 160``).
S3. The ImageNet EfficientNet-Lite0 at 224x224: top-1 agreement with the unpruned model and KL on held-out
    photographs (``skimage.data``; split by source photo), recovery by distillation on the other photos' crops.

Everything built is cached in ``--work`` (a rerun skips it). Timed work runs alone (``benchmarks.quiet``)::

    .venv/bin/python -m benchmarks.suites.latprune --work bench-work/latprune --sections s1

``--smoke`` (a tiny CNN on sklearn digits, one epoch, short timing) proves it runs; its figures are no claim.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmarks.suites.latprune import points as P
from benchmarks.suites.latprune import verdict as V

SECTIONS = ("s1", "s2", "s3")


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.suites.latprune", description=__doc__.splitlines()[0])
    p.add_argument("--work", default="bench-work/latprune", help="cache of every built model (resumable)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--sections", default="s1,s2,s3")
    p.add_argument("--teacher", default="demo-out/teacher.pt", help="S1's teacher (mnist5k, 64x64)")
    p.add_argument("--s2-resolution", type=int, default=160)
    p.add_argument("--s2-teacher", default=None, help="S2's teacher (default: fine-tuned into the work dir)")
    p.add_argument("--s2-finetune-epochs", type=int, default=1, help="epochs per unfreezing phase of S2's teacher")
    p.add_argument("--flops", default=None, help="FLOPs fractions kept (S1/S2; default 0.5,0.3)")
    p.add_argument("--s3-flops", default="0.7,0.5", help="FLOPs fractions kept (S3)")
    p.add_argument("--lower", default=None, help="extra latency targets: fractions of the fastest FLOPs p50 "
                   "(default 0.8)")
    p.add_argument("--recover-epochs", type=int, default=3, help="S1 recovery epochs (fine-tuning)")
    p.add_argument("--recover-images", type=int, default=2400, help="S1 recovery: this many train images "
                   "(0: the whole train split)")
    p.add_argument("--recover-lr", type=float, default=1e-3)
    p.add_argument("--s2-recover-epochs", type=int, default=1)
    p.add_argument("--s2-recover-images", type=int, default=800)
    p.add_argument("--s3-recover-epochs", type=int, default=2)
    p.add_argument("--max-iterations", type=int, default=4, help="measure-and-tighten rounds of a latency target "
                   "(a target missed with fewer is tried again)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=10.0, help="seconds per artifact over all rounds")
    p.add_argument("--pause", default="", help="pids of one's own processes to SIGSTOP while timing")
    p.add_argument("--smoke", action="store_true", help="tiny CNN on digits, one epoch, short timing")
    p.add_argument("--deadline", default=None, help="HH:MM UTC (today, or tomorrow if past): no point starts "
                   "building after it; the section measures what is built and says which were not")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _deadline(hhmm: str) -> float:
    """Epoch seconds of the next HH:MM UTC."""
    import calendar

    try:
        h, m = (int(x) for x in hhmm.split(":"))
    except ValueError:
        raise SystemExit(f"--deadline must be HH:MM (UTC), got {hhmm!r}") from None
    now = time.time()
    day = calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0))
    t = day + 3600 * h + 60 * m
    return t if t > now - 12 * 3600 else t + 86400


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


# --------------------------------------------------------------------------- scoring
def label_score(splits):
    """Test-split top-1 of the int8 IR and of the PyTorch model."""
    from edgetl.evaluate import evaluate
    from edgetl.train import evaluate_module

    def score(int8, art):
        return {"accuracy": evaluate(int8, splits, split="test", threads=2)["accuracy"],
                "accuracy_fp32": evaluate_module(art.model, splits.test, art.input_spec)["accuracy"]}

    return score


# --------------------------------------------------------------------------- teachers
def _smoke_teacher(splits, resolution: int, epochs: int = 4):
    import torch

    from edgetl.artifact import Artifact, Format, InputSpec
    from edgetl.models import build_arch
    from edgetl.train import fit

    torch.manual_seed(0)
    spec = InputSpec(shape=(3, resolution, resolution), source_channels=1)
    art = Artifact(format=Format.TORCH, model=build_arch("edgetl_tinycnn", num_classes=10), arch="edgetl_tinycnn",
                   input_spec=spec, labels=tuple(str(i) for i in range(10)), extra={"data": "digits"})
    fit(art.model, splits, spec, epochs=epochs, lr=3e-3, seed=0, description="smoke teacher")
    return art


def _s2_teacher(a, work: Path, splits):
    """S2's teacher: the given file, or ``edgetl finetune --resolution R`` into the work dir (cached)."""
    import subprocess

    from edgetl.models import load_model

    if a.s2_teacher:
        return load_model(a.s2_teacher), f"given: {a.s2_teacher}"
    path = work / "s2" / "teacher.pt"
    cmd = [sys.executable, "-m", "edgetl.cli", "finetune", "--model", "efficientnet_lite0", "--data", "mnist5k",
           "--resolution", str(a.s2_resolution), "--epochs", str(a.s2_finetune_epochs), "-o", str(path)]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _log("[s2] fine-tuning the teacher: " + shlex.join(cmd))
        subprocess.run(cmd, check=True)
    art = load_model(path)
    rec = next((r for r in art.history if r.stage == "finetune"), None)
    secs = f", {rec.seconds / 60:.0f} min" if rec and rec.seconds else ""
    return art, f"fine-tuned here: `{shlex.join(['edgetl', *cmd[3:]])}`{secs}"


# --------------------------------------------------------------------------- one section
def run_section(sec: P.Section, *, flops: list[float], lower: list[float], a, meta: dict, metric: str) -> dict:
    """Build every point (cached), measure them interleaved, judge the checks; returns the section record."""
    P.claim_work_dir(sec)
    out = {**meta, "key": sec.key, "metric": metric, "recovery": sec.recovery.describe(), "points": []}
    pts = [P.teacher_point(sec)]
    pts += [P.flops_point(sec, f) for f in flops]
    with P.timer(_log, f"[{sec.key}] latency table"):
        out["latency_table"] = P.build_table(sec)
    _log(f"[{sec.key}] measuring the FLOPs points (their p50s are the latency targets)")
    first = V.measure_points(pts, threads=a.threads, rounds=3, min_time=a.min_time / 2, quick=a.smoke,
                             pause=sec.pause)
    targets = [(f"{p['name'].removeprefix('lrp-')}", first["points"][p["name"]]["p50_ms"])
               for p in pts if p["kind"] == "flops" and p["name"] in first["points"]]
    if targets:
        fastest = min(t for _, t in targets)
        targets += [(f"{int(round(100 * f))}pc-of-fastest", f * fastest) for f in lower]
    out["targets"] = {k: v for k, v in targets}
    out["target_measure"] = {"note": "the FLOPs points' int8 p50 measured before the latency points were built "
                                     "(3 interleaved rounds, quiet machine)",
                             **{k: first[k] for k in ("rounds_run", "quiet", "config")},
                             "p50_ms": {k: v["p50_ms"] for k, v in first["points"].items()},
                             "contended": {k: v["contended"] for k, v in first["points"].items()}}
    pts += [P.latency_point(sec, ms, label, max_iterations=a.max_iterations) for label, ms in targets]
    _log(f"[{sec.key}] measuring every point interleaved")
    m = V.measure_points(pts, threads=a.threads, rounds=a.rounds, min_time=a.min_time, quick=a.smoke,
                         pause=sec.pause)
    out["points"], out["measure"] = pts, m
    out["checks"] = [V.check_a(pts, m, metric), V.check_b(pts, m, metric, meta["need"])]
    return out


def _write(out: dict, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    md = [f"# Latency-budgeted vs FLOPs-targeted LRP ({out['when']}{', SMOKE: no claims' if out['smoke'] else ''})",
          "", "Every figure: OpenVINO int8 (edgetl's NNCF path), batch 1, "
          f"{out['threads']} threads, p50 of interleaved rounds on a quiet machine (other helpers' runs waited; "
          "the harness still marks any round where another process took CPU: such a row is not a result).", ""]
    for s in out["sections"]:
        md += [f"Command: `{s['command']}`", ""] + V.section_markdown(s)
    for k, why in out.get("not_run", {}).items():
        md += [f"- {k.upper()} not run: {why}"]
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n")
    V.plot(out, out_dir / f"{stem}.png")


def main(argv=None) -> int:
    a = _args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still releases the quiet lock and flag
    a.flops = a.flops or ("0.5" if a.smoke else "0.5,0.3")
    a.lower = a.lower or ("0.8" if a.smoke else "0.8")
    if a.smoke:  # short timing: the smoke proves the suite runs; its figures are no claim
        a.rounds, a.min_time = 3, 0.6
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(a.threads)
    from benchmarks.harness import environment
    from benchmarks.quiet import remove_stale_flag, set_enabled
    from edgetl.data import load_data

    set_enabled(not a.smoke)  # smoke timings are no claim, and tests start it under the shared lock
    if not a.smoke and remove_stale_flag():
        _log("removed a quiet flag left by a process that is gone")
    from edgetl.models import load_model

    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        print(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    work = Path(a.work) / ("smoke" if a.smoke else "")
    stem = "latprune-smoke" if a.smoke else "latprune"
    out_dir = Path(a.out)
    command = "python -m benchmarks.suites.latprune " + shlex.join(argv if argv is not None else sys.argv[1:])
    old = out_dir / f"{stem}.json"
    out = json.loads(old.read_text()) if old.exists() else {}
    out.update({"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "smoke": a.smoke,
                "threads": a.threads, "env": environment()})
    out.setdefault("sections", [])
    pause = tuple(int(p) for p in a.pause.split(",") if p.strip())
    deadline = _deadline(a.deadline) if a.deadline else None
    recover_lr = a.recover_lr
    for key in wanted:
        t0 = time.perf_counter()
        if key in ("s1", "s2"):
            data = "digits" if a.smoke else "mnist5k"
            splits = load_data(data, seed=0)
            if key == "s1":
                teacher = _smoke_teacher(splits, 32) if a.smoke else load_model(a.teacher)
                how = "edgetl_tinycnn trained 4 epochs (smoke)" if a.smoke else f"`{a.teacher}` (the demo teacher)"
                rec = P.Recovery("finetune", 1 if a.smoke else a.recover_epochs, recover_lr,
                                 None if a.smoke or not a.recover_images else a.recover_images)
            else:
                if a.smoke:
                    teacher, how = _smoke_teacher(splits, 48), "edgetl_tinycnn at 48x48 (smoke)"
                else:
                    teacher, how = _s2_teacher(a, Path(a.work), splits)
                rec = P.Recovery("finetune", 1 if a.smoke else a.s2_recover_epochs, recover_lr,
                                 None if a.smoke else a.s2_recover_images)
            res = teacher.input_spec.resolution[0]
            meta = {"title": f"{data}, {res}x{res}, teacher {'tiny CNN' if a.smoke else 'EfficientNet-Lite0'}",
                    "note": f"Teacher: {how}. Test split of {data} ({len(splits.test)} images), labels.",
                    "need": 2.0 if res <= 64 else 1.5, "resolution": res}
            sec = P.Section(key=key, teacher=teacher, splits=splits, recovery=rec, score=label_score(splits),
                            work=work, threads=a.threads, quick=a.smoke, pause=pause, log=_log, deadline=deadline)
            record = run_section(sec, flops=_floats(a.flops), lower=_floats(a.lower), a=a, meta=meta,
                                 metric="accuracy")
        else:
            from benchmarks.suites.latprune import photos

            sec, meta = photos.section(a, work=work, pause=pause, log=_log)
            record = run_section(sec, flops=_floats(a.s3_flops), lower=_floats(a.lower)[:1], a=a, meta=meta,
                                 metric="agreement")
        record["command"] = command
        record["seconds"] = time.perf_counter() - t0
        out["sections"] = sorted([s for s in out["sections"] if s["key"] != key] + [record], key=lambda s: s["key"])
        _write(out, out_dir, stem)
        _log(f"[{key}] done in {record['seconds'] / 60:.1f} min; results in {out_dir / stem}.md")
    print((out_dir / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
