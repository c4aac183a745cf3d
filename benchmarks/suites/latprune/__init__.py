"""Latency-budgeted against FLOPs-targeted LRP pruning, measured (issue #15's benchmark): see ``__main__``."""
