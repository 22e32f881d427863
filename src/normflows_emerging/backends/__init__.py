"""Faster solve backends, registered with :func:`normflows_emerging.solve.register_backend`.

Importing :mod:`normflows_emerging` imports this package, which registers ``"compiled"`` (the CPU
default when the Cython extension is built).
"""

from ..solve import register_backend
from . import compiled

register_backend(
    "compiled",
    compiled.solve_compiled,
    default_for=("cpu",),
    unavailable_reason=compiled.unavailable_reason,
)

__all__ = ["compiled"]
