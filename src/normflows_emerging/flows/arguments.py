"""Argument checks shared by the layers, the model builders and the bits/dim helpers."""

from numbers import Integral
from typing import Any


def check_int(label: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int; raise ValueError naming ``label`` unless it is an int >= minimum.

    ``bool`` is refused (``True`` is an int to Python, never a meant count); numpy ints pass.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{label} must be {kind}, got {value!r}")
    return int(value)


def check_positive_int(label: str, value: Any) -> int:
    """Return ``value`` as an int; raise ValueError naming ``label`` unless it is an int >= 1."""
    return check_int(label, value, 1)


def check_odd_int(label: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int; raise ValueError unless it is an odd int >= ``minimum``."""
    odd = isinstance(value, Integral) and not isinstance(value, bool) and value % 2 == 1
    if not odd or value < minimum:
        raise ValueError(f"{label} must be an odd int >= {minimum}, got {value!r}")
    return int(value)


def check_bool(label: str, value: Any) -> bool:
    """Return ``value`` if it is a bool; raise TypeError naming ``label`` otherwise.

    Strings such as ``"no"`` are truthy: taking them as flags would silently mean True.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{label} must be True or False, got {value!r}")
    return value
