"""Argument checks shared by the model builders and the bits/dim helpers."""

from numbers import Integral
from typing import Any


def check_positive_int(label: str, value: Any) -> int:
    """Return ``value`` as an int; raise ValueError naming ``label`` unless it is an int >= 1.

    ``bool`` is refused (``True`` is an int to Python, never a meant count); numpy ints pass.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
    return int(value)
