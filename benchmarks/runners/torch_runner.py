"""PyTorch eager runner."""

from __future__ import annotations

from benchmarks.runners.base import Runner


class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        import torch

        self._torch = torch
        if options.threads:
            torch.set_num_threads(options.threads)
        self.model = artifact.model.eval()

    def run(self, batch):
        torch = self._torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()

    def describe(self):
        return {"runtime": "torch", "version": self._torch.__version__, "threads": self._torch.get_num_threads(),
                "precision": "fp32"}
