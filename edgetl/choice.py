"""One base for closed choices (formats, backends, precisions, criteria options).

A :class:`Choice` parses case-insensitively, prints as its value, and a wrong name raises
:class:`~edgetl.errors.UnknownNameError` suggesting the nearest valid one.

Example::

    class Mode(Choice):
        FAST = "fast"
        SAFE = "safe"

    Mode.parse("Fast")   # Mode.FAST;  Mode.parse("fats") -> "unknown mode 'fats'; did you mean 'fast'?"
"""

from __future__ import annotations

import enum
from typing import Any

from edgetl.errors import UnknownNameError

__all__ = ["Choice"]


class Choice(str, enum.Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any):
        if isinstance(value, cls):
            return value
        try:
            return cls(cls._normalize(str(value)))
        except ValueError:
            raise UnknownNameError(cls._kind(), str(value), [m.value for m in cls]) from None

    @classmethod
    def _normalize(cls, text: str) -> str:
        return text.strip().lower()

    @classmethod
    def _kind(cls) -> str:
        """The noun in error messages ("unknown KIND 'x'")."""
        return cls.__name__.lower()
