"""Errors of the training buffers."""

from __future__ import annotations

import numbers
from typing import Any


class BufferConfigError(ValueError):
    """A bad buffer setting (kind, capacity, watermark, ...); the message names it and what is allowed."""


class BufferStateError(ValueError):
    """A buffer call that does not fit its state or its samples (wrong shapes, put after the end)."""


class BufferFullError(BufferStateError):
    """A put on a full FIFO/FIRO buffer; wait for ``has_room(n)`` before putting."""


def check_int(name: str, value: Any, low: int, allowed: str) -> int:
    """``value`` as an int ``>= low``, else :class:`BufferConfigError` naming ``name`` and what is ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise BufferConfigError(f"buffer {name}={value!r}: allowed {allowed}")
    return int(value)
