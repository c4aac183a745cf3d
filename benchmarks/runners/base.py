"""Moved to :mod:`edgetl.runtimes.base`; this name stays for old imports (every public name re-exported)."""

import importlib as _importlib

globals().update({k: v for k, v in vars(_importlib.import_module("edgetl.runtimes.base")).items()
                  if not k.startswith("__")})
