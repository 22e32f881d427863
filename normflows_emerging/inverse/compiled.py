"""Thin wrapper of the Cython extension ``normflows_emerging._inverse``."""

import torch

try:
    from normflows_emerging import _inverse
except ImportError:  # the package was installed without building the extension
    _inverse = None

_SOLVERS = {}
if _inverse is not None:
    _SOLVERS = {torch.float32: _inverse.solve_causal_float32,
                torch.float64: _inverse.solve_causal_float64}


def compiled_available():
    """True if the compiled extension was built and imports."""
    return _inverse is not None


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
    if _inverse is None:
        raise RuntimeError("the compiled inverse is not built; reinstall with `pip install .`")
    if not y.is_cpu:
        raise ValueError(f"the compiled inverse runs on CPU tensors, got a {y.device} tensor; "
                         "use backend='torch'")
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
