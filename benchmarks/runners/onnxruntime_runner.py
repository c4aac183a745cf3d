"""Moved to :mod:`edgetl.runtimes.onnxruntime_runner`; this name stays for old imports (every public name re-exported)."""

import importlib as _importlib

globals().update({k: v for k, v in vars(_importlib.import_module("edgetl.runtimes.onnxruntime_runner")).items()
                  if not k.startswith("__")})
