"""int8 per backend vs fp32 and vs the plain quantizer defaults (run: python -m benchmarks.suites.quantize)."""
