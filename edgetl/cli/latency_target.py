"""``edgetl prune --target-latency-ms``: the CLI's wrapper around a latency target.

The loop (prune to a predicted budget, measure, tighten) is :class:`edgetl.prune.latency_target.LatencyTarget`;
measuring here (the harness, the per-layer latency table of :mod:`benchmarks.latency_table`) is
:class:`edgetl.run_latency.LocalLatency`, which a recipe's prune stage uses too. This wrapper checks the
command's flags (errors name them) and adds boards: with ``--host`` the table and every measurement are taken on
the board over SSH.

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

from edgetl.artifact import Artifact
from edgetl.errors import ConfigError

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
        from benchmarks.latency_table import PRECISIONS
        from edgetl.run_latency import LocalLatency

        if precision not in PRECISIONS:
            raise ConfigError(f"--latency-precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
        if not target_ms > 0:
            raise ConfigError(f"--target-latency-ms must be a positive number of milliseconds, got {target_ms}")
        if max_iterations < 1:
            raise ConfigError(f"--max-iterations must be at least 1, got {max_iterations}")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        local = LocalLatency.from_options(device=device, runtime=runtime, threads=threads, precision=precision,
                                          quick=quick, cache_dir=cache_dir)
        ssh = None
        if host:
            from benchmarks.remote import SshTarget

            ssh = SshTarget.from_profile(host, local.profile, **(ssh_options or {}))
        return cls(target_ms=float(target_ms), profile=local.profile, runtime=local.runtime, threads=local.threads,
                   max_iterations=max_iterations, cache_dir=cache_dir, quick=quick, precision=precision, ssh=ssh)

    def _local(self):
        from edgetl.run_latency import LocalLatency

        return LocalLatency(profile=self.profile, runtime=self.runtime, threads=self.threads,
                            precision=self.precision, quick=self.quick, cache_dir=self.cache_dir)

    def _bench_config(self):
        return self._local().bench_config()

    def measure_p50(self, art: Artifact, splits=None) -> float:
        """p50 (ms, batch 1, wall clock) of a PyTorch artifact on the target runtime, here or on the board."""
        if self.ssh is not None:
            return self._remote_p50(art, splits)
        return self._local().p50(art, splits)

    def prune(self, art: Artifact, config, splits, *, recover=None) -> tuple[Artifact, dict[str, Any]]:
        """Prune ``art`` to the measured target (:meth:`edgetl.prune.latency_target.LatencyTarget.prune`)."""
        from benchmarks.latency_table import table_summary
        from edgetl.prune.latency_target import LatencyTarget as Loop

        local = self._local()

        def latency_model(a: Artifact, unpruned_ms: float):
            base = unpruned_ms if self.precision == "int8" else None
            return self._remote_table(a, base_ms=base) if self.ssh is not None else local.table(a, unpruned_ms)

        info = local.info(host=self.ssh.host if self.ssh is not None else "local")
        loop = Loop(target_ms=self.target_ms, measure=lambda a: self.measure_p50(a, splits),
                    latency_model=latency_model, info=info, max_iterations=self.max_iterations,
                    describe=table_summary)
        return loop.prune(art, config, splits, recover=recover)

    # ------------------------------------------------------------------ on a board
    def _deployed_file(self, art: Artifact, splits, folder: Path) -> Path:
        """The file the board runs: the fp32 ONNX, or the int8 model (quantized here: it is portable)."""
        import torch

        if self.precision == "int8":
            return self._local().int8(art, splits, folder).path
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
