"""``edgetl prune --target-latency-ms``: the wiring between the prune stage and the measured latency model.

The prune stage never imports benchmark code: here the CLI builds the per-layer latency table for the device
and runtime (:mod:`benchmarks.latency_table`), calibrates its base on the harness-measured p50 of the unpruned
model, injects it into :class:`~edgetl.prune.PruneConfig`, and measures each pruned model with the same harness
(:func:`edgetl.prune.fit_latency` tightens the budget until the measured p50 meets the target).

Example::

    target = LatencyTarget.from_options(target_ms=1.2, device="x86-cpu", runtime="openvino", threads=2)
    pruned, report = target.prune(artifact, PruneConfig(criterion="lrp"), splits)
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.artifact import Artifact, Format
from edgetl.errors import BudgetError, ConfigError

__all__ = ["LatencyTarget"]


@dataclass(frozen=True)
class LatencyTarget:
    target_ms: float
    profile: Any  # benchmarks.profiles.DeviceProfile
    runtime: str
    threads: int | None
    max_iterations: int = 4
    cache_dir: Path | None = None
    quick: bool = False
    precision: str = "fp32"  # int8: the target is the int8 model's p50 (NNCF for OpenVINO, QDQ for ORT)
    ssh: Any = None  # a benchmarks.remote.SshTarget: the table and every measurement are taken on that board

    @classmethod
    def from_options(cls, *, target_ms: float, device: str, runtime: str | None, threads: int | None,
                     max_iterations: int = 4, cache_dir: Path | None = None, quick: bool = False,
                     precision: str = "fp32", host: str | None = None,
                     ssh_options: dict[str, Any] | None = None) -> LatencyTarget:
        from benchmarks.latency_table import PRECISIONS, RUNTIMES
        from benchmarks.profiles import load_profile

        if precision not in PRECISIONS:
            raise ConfigError(f"--latency-precision must be {' or '.join(PRECISIONS)}, got {precision!r}")

        if not target_ms > 0:
            raise ConfigError(f"--target-latency-ms must be a positive number of milliseconds, got {target_ms}")
        if max_iterations < 1:
            raise ConfigError(f"--max-iterations must be at least 1, got {max_iterations}")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        profile = load_profile(device)
        if runtime is None:
            usable = [r for r in profile.runtimes if r in RUNTIMES]
            runtime = next((r for r in usable if r != "torch"), usable[0] if usable else None)
            if runtime is None:
                raise ConfigError(f"device profile {profile.name!r} has none of the runtimes the latency table "
                                  f"measures on ({', '.join(RUNTIMES)}); pass --runtime")
        elif runtime not in RUNTIMES:
            raise ConfigError(f"the latency table measures on {', '.join(RUNTIMES)}; got --runtime {runtime!r}")
        if precision == "int8" and runtime == "torch":
            raise ConfigError("an int8 latency target runs on openvino or onnxruntime; pass --runtime")
        ssh = None
        if host:
            from benchmarks.remote import SshTarget

            ssh = SshTarget.from_profile(host, profile, **(ssh_options or {}))
        return cls(target_ms=float(target_ms), profile=profile, runtime=runtime,
                   threads=threads if threads is not None else profile.threads, max_iterations=max_iterations,
                   cache_dir=cache_dir, quick=quick, precision=precision, ssh=ssh)

    # ------------------------------------------------------------------ measurement
    def _bench_config(self):
        from benchmarks.harness import BenchConfig

        b = self.profile.bench
        if self.quick:
            return BenchConfig(threads=self.threads, runtime=self.runtime, warmup_runs=3, warmup_s=0.1,
                               min_time_s=0.3, min_count=30, max_time_s=10.0)
        return BenchConfig(threads=self.threads, runtime=self.runtime, warmup_runs=b.warmup_runs,
                           warmup_s=b.warmup_s, min_time_s=b.min_time_s, min_count=b.min_count,
                           max_time_s=b.max_time_s)

    def measure_p50(self, art: Artifact, splits=None) -> float:
        """p50 (ms, batch 1, wall clock) of a PyTorch artifact on the target runtime, through the harness.

        For an int8 target the model is quantized first, by edgetl's own int8 path for the runtime (NNCF for
        OpenVINO, U8S8 QDQ for ONNX Runtime), calibrated on ``splits``.
        """
        import torch

        from benchmarks.harness import measure

        config = self._bench_config()
        if self.ssh is not None:
            return self._remote_p50(art, splits)
        if self.runtime == "torch":
            return measure(art, config, profile=self.profile).latency_ms.p50
        if self.precision == "int8":
            from edgetl.quantize import QuantizeConfig, quantize
            from edgetl.stages import StageContext

            with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
                suffix = ".xml" if self.runtime == "openvino" else ".onnx"
                q = quantize(art, QuantizeConfig(backend=self.runtime, precision="int8",
                                                 calib_samples=64 if self.quick else 300, allow_drop=True),
                             data=splits, ctx=StageContext(output=Path(tmp) / f"model.int8{suffix}"))
                return measure(q, config, profile=self.profile).latency_ms.p50
        with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
            f = Path(tmp) / "pruned.onnx"
            x = torch.zeros(art.input_spec.batch_shape(1))
            torch.onnx.export(art.model.eval(), (x,), str(f), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17)
            onnx_art = Artifact(format=Format.ONNX, path=f, input_spec=art.input_spec, labels=art.labels,
                                arch=art.arch, history=list(art.history), extra=dict(art.extra))
            return measure(onnx_art, config, profile=self.profile).latency_ms.p50

    # ------------------------------------------------------------------ pruning
    def prune(self, art: Artifact, config, splits, *, recover=None) -> tuple[Artifact, dict[str, Any]]:
        """Prune ``art`` to the measured target; raises :class:`BudgetError` when every iteration misses it.

        The iterations prune without recovery (recovery changes no width); the final model is pruned once more
        at the budget that met the target, with ``config.recover_epochs`` or ``recover`` (e.g. distillation).
        """
        from benchmarks.latency_table import TimingConfig, build_latency_table, table_summary
        from edgetl.prune import fit_latency, prune

        if art.model is None:
            raise ConfigError("a latency target prunes a PyTorch model; this artifact has none")
        timing = TimingConfig(calls=3, rounds=1, warmup=1) if self.quick else TimingConfig()
        unpruned = self.measure_p50(art, splits)
        if self.ssh is not None:
            table = self._remote_table(art, base_ms=unpruned if self.precision == "int8" else None)
        else:
            table = build_latency_table(art.model, art.input_spec.shape, runtime=self.runtime, threads=self.threads,
                                        device=self.profile.name, cache_dir=self.cache_dir, timing=timing,
                                        max_points=6 if self.quick else 12, precision=self.precision,
                                        base_ms=unpruned if self.precision == "int8" else None)
        table_base = table.base_ms
        table.base_ms = unpruned  # the prediction starts from what the harness measures, as the check does
        cfg = dataclasses.replace(config, ratio=None, target_flops=None, target_params=None, steps=1,
                                  target_latency_ms=self.target_ms, latency_model=table)

        def prune_at(budget: float):
            try:
                trial = prune(art, dataclasses.replace(cfg, target_latency_ms=budget, recover_epochs=0), data=splits)
            except BudgetError as e:
                if budget >= self.target_ms:
                    raise
                raise BudgetError(f"latency target {self.target_ms:.4g} ms not met: the pruned models measured "
                                  f"slower than predicted, and the tightened budget {budget:.4g} ms is out of "
                                  f"reach ({e})") from None
            return trial, trial.history[-1].metrics["latency_allocation"]["predicted_ms"]

        fit = fit_latency(prune_at, lambda a: self.measure_p50(a, splits), self.target_ms,
                          max_iterations=self.max_iterations)
        report = {"target_ms": self.target_ms, "device": self.profile.name, "runtime": self.runtime,
                  "precision": self.precision, "host": self.ssh.host if self.ssh is not None else "local",
                  "threads": self.threads, "met": fit.met, "iterations": fit.iterations,
                  "predicted_ms": fit.predicted_ms, "measured_p50_ms": fit.measured_ms,
                  "unpruned_p50_ms": unpruned, "table_base_ms": table_base, "table": table_summary(table),
                  "note": "measured through the edgetl harness (wall-clock p50); the table's base is set to the "
                          "unpruned model's measured p50"}
        if not fit.met:
            raise BudgetError(
                f"latency target {self.target_ms:.4g} ms not met after {len(fit.iterations)} iteration(s): the last "
                f"pruned model measured {fit.measured_ms:.4g} ms p50 on {self.runtime} (predicted "
                f"{fit.predicted_ms:.4g} ms; unpruned {unpruned:.4g} ms). Raise the target, allow more "
                "iterations (--max-iterations), or measure on a quieter machine")
        pruned = fit.result
        if config.recover_epochs > 0 or recover is not None:  # recovery changes no width: prune again, recovering
            pruned = prune(art, dataclasses.replace(cfg, target_latency_ms=fit.iterations[-1]["budget_ms"]),
                           data=splits, recover=recover)
        return pruned, report

    # ------------------------------------------------------------------ on a board
    def _deployed_file(self, art: Artifact, splits, folder: Path) -> Path:
        """The file the board runs: the fp32 ONNX, or the int8 model (quantized here: it is portable)."""
        import torch

        if self.precision == "int8":
            from edgetl.quantize import QuantizeConfig, quantize
            from edgetl.stages import StageContext

            suffix = ".xml" if self.runtime == "openvino" else ".onnx"
            q = quantize(art, QuantizeConfig(backend=self.runtime, precision="int8",
                                             calib_samples=64 if self.quick else 300, allow_drop=True),
                         data=splits, ctx=StageContext(output=folder / f"model.int8{suffix}"))
            return q.path
        if self.runtime == "torch":
            from edgetl.models import save_model

            return save_model(art, folder / "model.pt")
        import json

        from edgetl.models import SIDECAR_SUFFIX

        f = folder / "model.onnx"
        torch.onnx.export(art.model.eval(), (torch.zeros(art.input_spec.batch_shape(1)),), str(f), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
        # the board's edgetl reads the input spec and labels from the sidecar
        f.with_name(f.name + SIDECAR_SUFFIX).write_text(json.dumps({**art.metadata(), "format": "onnx"}, default=str))
        return f

    def _remote_p50(self, art: Artifact, splits) -> float:
        from benchmarks.remote import bench_remote

        with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
            path = self._deployed_file(art, splits, Path(tmp))
            [res] = bench_remote([path], self.ssh, profile=self.profile,
                                 config=dataclasses.replace(self._bench_config(), runtime=self.runtime))
        return res.latency_ms.p50

    def _remote_table(self, art: Artifact, *, base_ms: float | None):
        """``edgetl latency-table`` on the board (its own cache there), read back as a LatencyTable."""
        import json
        import shlex

        from benchmarks.latency_table import LatencyTable
        from edgetl.cli.profile_cmd import _json_line, _ssh
        from edgetl.errors import RemoteError
        from edgetl.models import save_model

        t = self.ssh
        if art.arch is None:
            raise ConfigError("a latency table on a board is built from an edgetl checkpoint of a zoo "
                              "architecture (it travels without pickled code); this model has no arch")
        run_dir = f"{t.workdir.rstrip('/')}/latency-{int(time.time())}"
        _ssh(t.ssh_argv(f"mkdir -p {shlex.quote(run_dir)}"), t, during="connecting", timeout=60)
        try:
            with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
                ckpt = save_model(art, Path(tmp) / "model.pt")
                _ssh(t.scp_argv([ckpt], run_dir), t, during="copying the model")
            args = ["latency-table", "model.pt", "--runtime", self.runtime, "--precision", self.precision, "--json"]
            if self.threads:
                args += ["--threads", str(self.threads)]
            if base_ms is not None:
                args += ["--base-ms", repr(float(base_ms))]
            if self.quick:
                args += ["--quick"]
            cmd = f"cd {shlex.quote(run_dir)} && {t.remote_edgetl} {' '.join(shlex.quote(a) for a in args)}"
            r = _ssh(t.ssh_argv(cmd), t, during="measuring the latency table", timeout=3600)
            payload = _json_line(r.stdout)
            if payload is None or not payload.get("ok"):
                why = payload.get("error") if payload else (r.stderr.strip().splitlines() or [""])[-1]
                raise RemoteError(f"edgetl latency-table on {t.host} failed: {why}")
            table = LatencyTable.from_dict(json.loads(json.dumps(payload["table"])))
            table.device = self.profile.name
            return table
        finally:
            try:
                _ssh(t.ssh_argv(f"rm -rf {shlex.quote(run_dir)}"), t, during="cleaning up", timeout=30)
            except RemoteError:
                pass
