"""The points of one section: the teacher's int8, FLOPs-targeted and latency-targeted LRP, each built once.

Every pruned point gets the same recovery (the section's :class:`Recovery`), then the same int8 path (edgetl's
NNCF quantizer for OpenVINO) and the same scoring; each is saved under the work dir (``model.pt``,
``model.int8.xml``, ``point.json``) and a rerun reads it back instead of building it again.
Timed work (the latency table, every measurement inside latency-targeted pruning) runs under
:func:`benchmarks.quiet.quiet_machine`; pruning, recovery and quantization share the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.quiet import quiet_machine
from edgetl.cli.latency_target import LatencyTarget
from edgetl.errors import ConfigError

Score = Callable[[Any, Any], dict[str, float]]  # (int8 artifact, pruned torch artifact) -> metrics


@dataclass(frozen=True)
class Recovery:
    """The one recovery every pruned point of a section gets."""

    kind: str  # "finetune" (labels) or "distill" (from the unpruned model)
    epochs: int
    lr: float
    train_images: int | None  # None: the whole recovery split
    adapt_bn: bool = True  # re-estimate BatchNorm statistics before and after (see recovery_fn)
    bn_momentum: float | None = 0.1  # during the recovery (None: the model's own; Lite0's package sets 0.01)
    seed: int = 0

    def describe(self) -> str:
        data = f"{self.train_images} train images" if self.train_images else "the whole train split"
        bn = (", BatchNorm statistics re-estimated on the same images before and after" if self.adapt_bn else "")
        bn += f", BatchNorm momentum {self.bn_momentum:g} while training" if self.bn_momentum else ""
        how = ("distillation from the unpruned model (edgetl's, one view per image)" if self.kind == "distill"
               else "fine-tuning on the labels (edgetl.train.fit)")
        return f"{how}, {self.epochs} epoch(s) at lr {self.lr:g} on {data}{bn}"


def subset(splits, n: int | None, seed: int = 0):
    """``splits`` with the first ``n`` of a seeded permutation of its train split (None: unchanged)."""
    import torch

    from edgetl.data import ImageSet

    if n is None or n >= len(splits.train):
        return splits
    idx = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:n]
    return dataclasses.replace(splits, train=ImageSet(splits.train.images[idx], splits.train.labels[idx]))


def recovery_fn(rec: Recovery, splits, teacher):
    """The recovery callable handed to ``prune(recover=)`` and ``LatencyTarget.prune(recover=)``."""
    from edgetl.artifact import StageRecord
    from edgetl.finetune import adapt_batchnorm

    data = subset(splits, rec.train_images, rec.seed)

    def recover(art, _data):
        # Before: a pruned model's BatchNorm statistics no longer match its channels, and edgetl.train.fit keeps
        # the best-validation weights judged in eval mode; with Lite0's momentum of 0.01 the running statistics
        # lag the training so far that a heavily pruned model stayed at chance on validation and fit restored
        # its untrained weights (S1, first run). Re-estimating first and a usual momentum avoid that.
        t0 = time.perf_counter()
        if rec.adapt_bn:
            adapt_batchnorm(art.model, data, art.input_spec)
        saved = _set_bn_momentum(art.model, rec.bn_momentum)
        try:
            val, art = _train(rec, art, data, teacher)
        finally:
            _set_bn_momentum(art.model, saved)
        if rec.adapt_bn:
            adapt_batchnorm(art.model, data, art.input_spec)
        return art.with_stage(StageRecord("recover", dataclasses.asdict(rec), {"val_accuracy_before_bn": val},
                                          time.perf_counter() - t0))

    return recover


def _set_bn_momentum(model, momentum):
    """Set every BatchNorm's momentum (None leaves them); returns the previous ones to restore."""
    import torch.nn as nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if isinstance(momentum, dict):
        for m in bns:
            m.momentum = momentum.get(id(m), m.momentum)
        return None
    saved = {id(m): m.momentum for m in bns}
    if momentum is not None:
        for m in bns:
            m.momentum = momentum
    return saved


def _train(rec: Recovery, art, data, teacher):
    """One recovery's training: (best validation accuracy or None, the artifact)."""
    from edgetl.train import fit

    if rec.kind == "distill":
        from edgetl.distill import DistillConfig, recovery_from

        # one view per image: the section's data are already crops and flips (and it halves the cost)
        cfg = DistillConfig(epochs=rec.epochs, lr=rec.lr, seed=rec.seed, views="original")
        return None, recovery_from(teacher, cfg)(art, data)
    return fit(art.model, data, art.input_spec, epochs=rec.epochs, lr=rec.lr, seed=rec.seed,
               description="recover").best_val_accuracy, art


@dataclass(frozen=True)
class QuietLatencyTarget(LatencyTarget):
    """:class:`LatencyTarget` whose every timed call runs alone (quantization stays outside the quiet time).

    With ``insitu`` (a :class:`benchmarks.latency_insitu.InSituModel` of the unpruned model) the widths are
    chosen against the in-situ deltas instead of the isolated per-layer table (why: that module's docstring).
    """

    pause: tuple[int, ...] = ()
    insitu: Any = None

    def prune(self, art, config, splits, *, recover=None):
        if self.insitu is None:
            return super().prune(art, config, splits, recover=recover)
        from benchmarks.latency_insitu import InSituModel
        from edgetl.prune.latency_target import LatencyTarget as Loop

        def latency_model(_art, _unpruned_ms):  # a fresh copy: each target calibrates its own scale
            return InSituModel.from_dict(self.insitu.to_dict())

        loop = Loop(target_ms=self.target_ms, measure=lambda a: self.measure_p50(a, splits),
                    latency_model=latency_model, info=self._local().info(), max_iterations=self.max_iterations,
                    describe=lambda m: m.to_dict(), recalibrate=True)
        return loop.prune(art, config, splits, recover=recover)

    def measure_p50(self, art, splits=None) -> float:
        if self.precision != "int8" or self.ssh is not None or self.runtime == "torch":
            with quiet_machine(pause=self.pause):
                return super().measure_p50(art, splits)
        from benchmarks.harness import measure
        from edgetl.quantize import QuantizeConfig, quantize
        from edgetl.stages import StageContext

        with tempfile.TemporaryDirectory(prefix="edgetl-latprune-") as tmp:
            suffix = ".xml" if self.runtime == "openvino" else ".onnx"
            q = quantize(art, QuantizeConfig(backend=self.runtime, precision="int8",
                                             calib_samples=64 if self.quick else 300, allow_drop=True),
                         data=splits, ctx=StageContext(output=Path(tmp) / f"model.int8{suffix}"))
            with quiet_machine(pause=self.pause):
                return measure(q, self._bench_config(), profile=self.profile).latency_ms.p50


@dataclass
class Section:
    """What one section needs to build its points."""

    key: str  # s1, s2, s3
    teacher: Any  # the unpruned PyTorch artifact
    splits: Any  # scoring uses its test split (or the section's own held-out set, through ``score``)
    recovery: Recovery
    score: Score
    work: Path
    threads: int
    quick: bool
    pause: tuple[int, ...] = ()
    log: Callable[[str], None] = print
    deadline: float | None = None  # epoch seconds: no point starts building after it (a row says so)

    def out_of_time(self, name: str, kind: str, target) -> dict[str, Any] | None:
        """The row of a point not started because the run's --deadline passed (nothing cached: a rerun builds it)."""
        if self.deadline is None or time.time() < self.deadline:
            return None
        when = time.strftime("%H:%M UTC", time.gmtime(self.deadline))
        self.log(f"[{self.key}] {name}: not built, the run's deadline ({when}) passed")
        return {"name": name, "kind": kind, "target": target, "missed": f"not built: the run's deadline ({when}) "
                "passed before it started (session time); a rerun with the same --work builds it"}

    @property
    def cache(self) -> Path:
        return self.work / "latency-cache"


def fingerprint(sec: Section) -> dict[str, Any]:
    """What a section's cached points depend on: the teacher's weights, the recovery, the data."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sec.teacher.model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return {"teacher_sha256": h.hexdigest()[:16], "recovery": dataclasses.asdict(sec.recovery),
            "input_shape": list(sec.teacher.input_spec.shape), "data": sec.splits.name,
            "sizes": [len(sec.splits.train), len(sec.splits.val), len(sec.splits.test)]}


def claim_work_dir(sec: Section) -> None:
    """Refuse a work dir built for another teacher, recovery or data: its cached points would be stale."""
    folder = sec.work / sec.key
    folder.mkdir(parents=True, exist_ok=True)
    f, fp = folder / "fingerprint.json", fingerprint(sec)
    if f.exists():
        old = json.loads(f.read_text())
        if old != json.loads(json.dumps(fp)):
            raise ConfigError(f"{folder} holds points built for another teacher, recovery or data ({old}); give "
                              "another --work or delete that folder")
    else:
        f.write_text(json.dumps(fp, indent=2))


def _int8(art, splits, folder: Path, quick: bool):
    from edgetl.quantize import QuantizeConfig, quantize
    from edgetl.stages import StageContext

    return quantize(art, QuantizeConfig(backend="openvino", precision="int8", allow_drop=True,
                                        calib_samples=64 if quick else 300),
                    data=splits, ctx=StageContext(output=folder / "model.int8.xml", overwrite=True))


def _finish(sec: Section, name: str, kind: str, art, folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Save the pruned model, quantize it, score both; write point.json last (it marks the point done)."""
    from edgetl.models import save_model
    from edgetl.prune import model_cost

    cost = model_cost(art.model, art.input_spec.shape)
    if kind != "teacher":
        save_model(art, folder / "model.pt")
    int8 = _int8(art, sec.splits, folder, sec.quick)
    scores = sec.score(int8, art)
    point = {"name": name, "kind": kind, "params": cost.params, "flops": cost.flops,
             "int8_path": str(folder / "model.int8.xml"), **scores, **extra}
    (folder / "point.json").write_text(json.dumps(point, indent=2, default=str))
    return point


def _cached(folder: Path) -> dict[str, Any] | None:
    f = folder / "point.json"
    if f.exists() and (folder / "model.int8.xml").exists():
        return json.loads(f.read_text())
    if folder.exists():  # half-built by an interrupted run: build it again
        shutil.rmtree(folder)
    return None


def _missed(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def teacher_point(sec: Section) -> dict[str, Any]:
    folder = sec.work / sec.key / "teacher"
    if (p := _cached(folder)) is not None:
        return p
    folder.mkdir(parents=True)
    sec.log(f"[{sec.key}] teacher int8")
    return _finish(sec, "teacher int8", "teacher", sec.teacher, folder, {"target": None})


def flops_point(sec: Section, fraction: float) -> dict[str, Any]:
    from edgetl.prune import PruneConfig, prune

    name = f"lrp-flops-{fraction:g}"
    folder = sec.work / sec.key / name
    if (p := _cached(folder)) is not None:
        return p
    missed = folder.parent / f"{folder.name}.missed.json"  # not with_suffix: names hold "0.5"
    if missed.exists():
        return json.loads(missed.read_text())
    if (late := sec.out_of_time(name, "flops", fraction)) is not None:
        return late
    sec.log(f"[{sec.key}] {name}: FLOPs target {fraction:g}")
    t0 = time.perf_counter()
    cfg = PruneConfig(criterion="lrp", target_flops=fraction, samples_per_class=10)
    try:
        art = prune(sec.teacher, cfg, data=sec.splits, recover=recovery_fn(sec.recovery, sec.splits, sec.teacher))
    except ConfigError as e:  # a FLOPs target out of reach (layer caps): a row saying so
        return _missed(missed, {"name": name, "kind": "flops", "target": fraction,
                                "missed": f"{type(e).__name__}: {e}"})
    folder.mkdir(parents=True)
    return _finish(sec, name, "flops", art, folder, {"target": fraction, "build_s": time.perf_counter() - t0})


def build_table(sec: Section) -> dict[str, Any]:
    """The int8 OpenVINO latency table of the teacher, measured alone (later prunes read it from the cache)."""
    from benchmarks.latency_table import TimingConfig, build_latency_table, table_summary
    from benchmarks.profiles import load_profile

    timing = TimingConfig(calls=3, rounds=1, warmup=1) if sec.quick else TimingConfig()
    t0 = time.perf_counter()
    with quiet_machine(pause=sec.pause) as q:
        table = build_latency_table(sec.teacher.model, sec.teacher.input_spec.shape, runtime="openvino",
                                    threads=sec.threads, device=load_profile("x86-cpu").name, cache_dir=sec.cache,
                                    timing=timing, max_points=6 if sec.quick else 12, precision="int8",
                                    base_ms=1.0)  # the base is set from the measured unpruned p50 at each prune
    return {**table_summary(table), "base_ms": None, "seconds": time.perf_counter() - t0, "quiet": q.to_dict()}


def insitu_model(sec: Section, *, fractions=(0.5,)):
    """The teacher's in-situ latency deltas on OpenVINO int8 (:mod:`benchmarks.latency_insitu`), cached in the
    section's work dir; deploying (pruning one group, NNCF) shares the machine, the timing runs alone."""
    import numpy as np

    from benchmarks.latency_insitu import InSituModel, OpenVinoInt8, build_insitu
    from edgetl.data import prepare

    f = sec.work / sec.key / "insitu.json"
    if f.exists():
        return InSituModel.from_dict(json.loads(f.read_text()))
    spec = sec.teacher.input_spec
    calib = prepare(sec.splits.train.images[:8], spec).numpy().astype(np.float32)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-insitu-") as tmp:
        dep = OpenVinoInt8(spec, calib, sec.threads, tmp)

        def timed(irs):
            with quiet_machine(pause=sec.pause):
                return dep.time(irs, rounds=2 if sec.quick else 5, calls=5 if sec.quick else 20)

        model = build_insitu(sec.teacher.model, spec.shape, deploy=dep, time=timed,
                             fractions=(0.5,) if sec.quick else fractions, log=sec.log)
    sec.log(f"[{sec.key}] in-situ deltas: {sum(map(len, model.deltas.values()))} variants in "
            f"{time.perf_counter() - t0:.0f} s")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(model.to_dict(), indent=1))
    return model


def latency_point(sec: Section, target_ms: float, label: str, *, max_iterations: int = 4) -> dict[str, Any]:
    """LRP pruned to a measured int8 p50 target; a target out of reach is a row saying so, not a crash."""
    from edgetl.errors import EdgetlError
    from edgetl.prune import PruneConfig

    name = f"lrp-latency-{label}"
    folder = sec.work / sec.key / name
    if (p := _cached(folder)) is not None:
        return p
    missed = folder.parent / f"{folder.name}.missed.json"  # not with_suffix: names hold "0.5"
    earlier: list[dict[str, Any]] = []
    if missed.exists():
        row = json.loads(missed.read_text())
        if row.get("max_iterations", 4) >= max_iterations:
            return row
        earlier = [*row.pop("earlier_attempts", []), row]  # tried with fewer iterations: try again, keep the miss
    if (late := sec.out_of_time(name, "latency", target_ms)) is not None:
        return late
    sec.log(f"[{sec.key}] {name}: int8 p50 target {target_ms:.4g} ms")
    t0 = time.perf_counter()
    target = QuietLatencyTarget.from_options(target_ms=target_ms, device="x86-cpu", runtime="openvino",
                                             threads=sec.threads, cache_dir=sec.cache, quick=sec.quick,
                                             precision="int8", max_iterations=2 if sec.quick else max_iterations)
    target = dataclasses.replace(target, pause=sec.pause, insitu=insitu_model(sec))
    try:
        # The fit (prune, quantize, measure, tighten) is mostly measurement: held quiet as one period rather
        # than a wait for the lock per measurement; the recovery (training) runs after, sharing the machine.
        # Recovery changes no width, so recovering the fitted model equals LatencyTarget's re-prune + recover.
        with quiet_machine(pause=sec.pause) as q:
            art, report = target.prune(sec.teacher, PruneConfig(criterion="lrp", samples_per_class=10),
                                       sec.splits)
        report["quiet"] = q.to_dict()
        art = recovery_fn(sec.recovery, sec.splits, sec.teacher)(art, sec.splits)
    except EdgetlError as e:  # e.g. BudgetError: the target was not met by measurement
        return _missed(missed, {"name": name, "kind": "latency", "target": target_ms, "max_iterations": max_iterations,
                                "missed": f"{type(e).__name__}: {e}", "earlier_attempts": earlier})
    folder.mkdir(parents=True)
    model = report.get("table") or {}
    report = {k: v for k, v in report.items() if k != "table"} | {
        "latency_model": model.get("kind", "isolated-table"), "change_scale": model.get("scale"),
        "table_measured_points": model.get("measured_points")}
    return _finish(sec, name, "latency", art, folder, {"target": target_ms, "latency_fit": report,
                                                        "build_s": time.perf_counter() - t0,
                                                        "earlier_attempts": earlier})


@contextlib.contextmanager
def timer(log: Callable[[str], None], what: str):
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.0f} s")
