"""Per-operator profilers, one module per runtime (see :mod:`benchmarks.profiler`, which picks one)."""
