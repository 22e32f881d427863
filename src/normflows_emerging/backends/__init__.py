"""Faster solve backends, registered with :func:`normflows_emerging.solve.register_backend`.

Importing :mod:`normflows_emerging` imports this package, which registers ``"compiled"`` (the CPU
default when the Cython extension is built) and ``"triton"`` (the CUDA default when triton 3.4
or newer imports; its kernels are loaded and checked on first use).
"""

from ..solve import register_backend
from . import compiled, triton_solve

register_backend(
    "compiled",
    compiled.solve_compiled,
    default_for=("cpu",),
    unavailable_reason=compiled.unavailable_reason,
)

register_backend(
    "triton",
    triton_solve.solve_triton,
    default_for=("cuda",),
    unavailable_reason=triton_solve.unavailable_reason,
    emerging_step=triton_solve.emerging_step,
)

__all__ = ["compiled", "triton_solve"]
