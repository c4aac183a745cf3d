"""PyTorch runner: eager, or ``torch.compile`` with ``extra={"compile": True}`` (optionally a ``compile_mode``).

Compilation happens on the first call, so the harness counts it in the cold start, not in the steady state.
"""

from __future__ import annotations

from edgetl.errors import ModelError
from edgetl.runtimes.base import Runtime


class TorchRunner(Runtime):
    runtime = "torch"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        import torch

        self._torch = torch
        if options.threads:
            torch.set_num_threads(options.threads)
        # Denormal floats (tiny activations of fine-tuned nets) run ~5x slower on x86 unless flushed to zero;
        # OpenVINO and deployed apps flush them, so eager timings without it mislead. Process-wide setting.
        self.flush_denormal = bool(options.extra.get("flush_denormal", True))
        torch.set_flush_denormal(self.flush_denormal)
        if artifact.model is None:
            raise ModelError(f"{artifact.name}: no PyTorch module in memory to run")
        self.model = artifact.model.eval()
        self.compile_mode = options.extra.get("compile_mode") if options.extra.get("compile") else None
        self.compiled = bool(options.extra.get("compile"))
        self._fn = self.model
        if self.compiled:
            mode = self.compile_mode or "default"
            try:
                self._fn = torch.compile(self.model, mode=mode, dynamic=False)
            except Exception as e:  # noqa: BLE001 - backends fail in many ways; say which and how to avoid it
                raise ModelError(f"torch.compile(mode={mode!r}) failed: {str(e).splitlines()[0][:200]}; "
                                 "bench in eager mode (drop --compile)") from None
        self._first = True

    def run(self, batch):
        torch = self._torch
        with torch.inference_mode():
            if self._first and self.compiled:
                try:
                    out = self._fn(torch.from_numpy(batch))
                except Exception as e:  # noqa: BLE001
                    raise ModelError(f"torch.compile could not compile {self.artifact.name} "
                                     f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); bench in eager mode "
                                     "(drop --compile)") from None
                self._first = False
                return out.numpy()
            return self._fn(torch.from_numpy(batch)).numpy()

    def run_named(self, feed):
        """Inputs by ``forward``'s parameter names; tuple/dict/namedtuple returns flattened and named after the
        artifact's contract (else the way :func:`edgetl.contract_read.read_module` names them)."""
        from edgetl.contract_read import _flatten_outputs

        torch = self._torch
        args = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in feed.items()}
        with torch.inference_mode():
            out = self.model(**args)
        flat = _flatten_outputs(out)
        contract = self.artifact.contract
        if contract is not None and len(contract.outputs) == len(flat):  # the names the contract (and exports) use
            return {o.name: v.numpy() for o, (_, v) in zip(contract.outputs, flat, strict=True)}
        return {k: v.numpy() for k, v in flat}

    def describe(self):
        return {"runtime": "torch", "version": self._torch.__version__, "threads": self._torch.get_num_threads(),
                "precision": "fp32", "flush_denormal": self.flush_denormal, "mode": f"compile:{self.compile_mode or 'default'}" if self.compiled else "eager"}
