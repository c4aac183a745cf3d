"""Moved to :mod:`edgetl.students` (the zoo owns its architectures); these names stay for old imports."""

from edgetl.students import MEDIUMCNN_WIDTHS, SMALLCNN_WIDTHS, TINYCNN_WIDTHS, TinyCNN, count_flops

__all__ = ["MEDIUMCNN_WIDTHS", "SMALLCNN_WIDTHS", "TINYCNN_WIDTHS", "TinyCNN", "count_flops"]
