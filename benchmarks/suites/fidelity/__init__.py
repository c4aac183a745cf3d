"""Harness fidelity: edgetl p50 vs OpenVINO benchmark_app on the same IR (run: python -m benchmarks.suites.fidelity)."""
