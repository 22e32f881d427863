"""The ``"compiled"`` solve backend: a thin wrapper of the Cython extension
``normflows_emerging._solve`` (CPU, float32 and float64, OpenMP).

The extension holds its kernels built for several instruction sets and runs the widest the CPU
supports; ``_solve.instruction_set()`` names it, ``_solve.set_instruction_set(name)`` or the
environment variable NORMFLOWS_EMERGING_ISA (``baseline``, ``avx2``, ``avx512``) forces one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
from pathlib import Path

import torch

try:
    from .. import _solve

    _IMPORT_ERROR = None
except ImportError as error:  # never built (no C compiler, or a checkout not installed), or broken
    _solve = None
    _IMPORT_ERROR = error


def missing_extension_message() -> str:
    """Why the compiled extension is missing, for the warning: which copy, why, and what to run."""
    package_dir = Path(__file__).resolve().parents[1]
    if _IMPORT_ERROR is not None and "NORMFLOWS_EMERGING_ISA" in str(_IMPORT_ERROR):
        # the extension is built and fine: only the instruction set asked for is wrong
        return f"The compiled solve is off: {_IMPORT_ERROR}. Unset it or name a supported set."
    if importlib.util.find_spec("normflows_emerging._solve") is None:
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        why = f"it holds no built extension (no _solve{suffix})"
    else:
        why = f"its extension failed to import ({_IMPORT_ERROR})"
    message = f"normflows_emerging was imported from {package_dir}, and {why}. "
    shadowed = [path for path in _installed_package_dirs() if path != package_dir]
    if shadowed:
        message += (
            f"The installed copy in {shadowed[0]} is shadowed: {package_dir.parent} comes "
            "first on sys.path (the current directory or PYTHONPATH); run from another "
            "directory, or install this checkout with `pip install -e .`. "
        )
    return message + (
        f"To build it, run `pip install -e .` in {package_dir.parent} if that is a "
        "source checkout, else reinstall normflows-emerging; either needs a C "
        "compiler, and with `pip install -v` pip shows why a build failed."
    )


def _installed_package_dirs() -> list[Path]:
    """The normflows_emerging folders of regular (non-editable) installs found on sys.path."""
    found = []
    for distribution in importlib.metadata.distributions(name="normflows-emerging"):
        init = Path(distribution.locate_file("normflows_emerging/__init__.py"))
        if init.is_file() and init.resolve().parent not in found:
            found.append(init.resolve().parent)
    return found


_SOLVERS = {}
if _solve is not None:
    _SOLVERS = {
        torch.float32: _solve.solve_causal_float32,
        torch.float64: _solve.solve_causal_float64,
    }


def compiled_available():
    """True if the compiled extension was built and imports."""
    return _solve is not None


def unavailable_reason() -> str | None:
    """None when the extension imports, else why not and what to run (for the registry)."""
    return None if _solve is not None else missing_extension_message()


def solve_compiled(y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel) = y`` with the compiled kernel (CPU, float32/float64).

    Contiguous tensors are shared with the extension without copying; the number of OpenMP
    threads follows ``torch.get_num_threads()`` (small solves run on one thread). The extension
    itself checks the shapes and the dilation; :func:`solve_autoregressive` checks the rest.

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted
      kernel: (C, C, m, m) causal kernel of y's dtype whose corner tap is lower-triangular
      dilation: spacing of the taps, >= 1

    Returns:
      x of shape (B, C, H, W), contiguous

    Raises:
      RuntimeError: the extension is not built
      ValueError: a non-CPU tensor, or shapes/dilation the extension rejects
      TypeError: a dtype other than float32 or float64
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal
    """
    if _solve is None:
        raise RuntimeError("the compiled inverse is not available. " + missing_extension_message())
    if not y.is_cpu:
        raise ValueError(
            f"the compiled inverse runs on CPU tensors, got a {y.device} tensor; "
            "use the 'torch' backend"
        )
    solver = _SOLVERS.get(y.dtype)
    if solver is None:
        raise TypeError(f"the compiled inverse takes float32 or float64, got {y.dtype}")
    # .numpy() refuses tensors that require grad; detach only then (it costs a tensor per call).
    y = (y.detach() if y.requires_grad else y).contiguous()
    kernel = (kernel.detach() if kernel.requires_grad else kernel).contiguous()
    x = torch.empty_like(y)
    try:
        solver(y.numpy(), kernel.numpy(), x.numpy(), dilation, torch.get_num_threads())
    except ZeroDivisionError as error:  # the extension cannot import torch's error type
        raise torch.linalg.LinAlgError(str(error)) from None
    return x
