"""edgetl's latency harness, runtime runners, device profiles and the project's own benchmark suites."""
