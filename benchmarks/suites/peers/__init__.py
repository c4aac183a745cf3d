"""Peers: edgetl LRP vs Torch-Pruning pruners and ModelOpt FastNAS (run: python -m benchmarks.suites.peers)."""
