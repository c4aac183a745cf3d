"""ExecuTorch runner (``.pte``) through the ExecuTorch Python runtime (XNNPACK delegate on this CPU)."""

from __future__ import annotations

import numpy as np

from edgetl.errors import InputFileError, MissingDependencyError
from edgetl.runtimes.base import Runtime


class ExecuTorchRunner(Runtime):
    runtime = "executorch"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        try:
            import torch
            from executorch.runtime import Runtime as EtRuntime
        except ImportError:
            raise MissingDependencyError("executorch", "mobile", "running ExecuTorch programs") from None
        self._torch = torch
        from edgetl.native_log import native_stderr

        try:
            program = EtRuntime.get().load_program(str(artifact.path))
            with native_stderr():  # XNNPACK's cpuinfo probing prints five lines per load on x86
                self.method = program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError / ValueError
            raise InputFileError(f"{artifact.path}: ExecuTorch cannot load it ({str(e).splitlines()[0][:300]})") from None
        # The input buffer is planned ahead of time: a static program takes exactly that batch, a dynamic one
        # (edgetl metadata says which) any batch up to it; larger batches run in chunks.
        self._max_batch = planned_batch(program)
        if not artifact.extra.get("dynamic_batch", False):
            self.fixed_batch = self._max_batch

    def run(self, batch):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if x.shape[0] <= self._max_batch or self.fixed_batch:
            return self.method.execute((x,))[0].numpy().copy()  # outputs alias memory the next call reuses
        return np.concatenate([self.method.execute((c.contiguous(),))[0].numpy().copy()
                               for c in torch.split(x, self._max_batch)])

    def describe(self):
        import executorch.version

        return {"runtime": "executorch", "version": executorch.version.__version__, "threads": self.options.threads,
                "backend": "xnnpack", "precision": self.artifact.extra.get("precision", "fp32")}


def planned_batch(program) -> int:
    """The batch size the program's first input is memory-planned for (its upper bound if dynamic)."""
    return int(program.metadata("forward").input_tensor_meta(0).sizes()[0])
