"""Input checks of the solves: cheap enough for the batch-1 sampling path."""

import torch

from . import device

# The dtypes every solve takes (torch has no triangular solve in float16/bfloat16).
SOLVE_DTYPES = (torch.float32, torch.float64)


def check_strided(tensor: torch.Tensor, what: str) -> None:
    """Raise a ``TypeError`` naming ``what`` unless ``tensor`` is dense (strided layout): the
    layers, solves and models take no sparse or other layouts."""
    if tensor.layout != torch.strided:
        raise TypeError(
            f"{what} must be a dense (strided) tensor, got layout {tensor.layout}; convert it "
            f"with .to_dense()"
        )


def check_solve_inputs(y: torch.Tensor, kernel: torch.Tensor, dilation: int) -> None:
    """Raise a clear error unless ``(y, kernel, dilation)`` describe a solvable causal convolution.

    Args:
      y: should be a float32 or float64 tensor of shape (B, C, H, W), C >= 1
      kernel: should be a tensor of shape (C, C, m, m), m >= 1, with y's dtype and device
      dilation: should be a positive ``int``

    Raises:
      TypeError: a non-tensor, a sparse or other non-strided tensor, a ``y`` that is not
        float32/float64 (the solves run in full precision only: torch has no triangular solve in
        float16/bfloat16), a kernel of another dtype, a non-int dilation
      ValueError: wrong shapes, dilation < 1, or tensors on different devices
    """
    if not isinstance(y, torch.Tensor) or not isinstance(kernel, torch.Tensor):
        raise TypeError(
            f"y and kernel must be torch.Tensors, got {type(y).__name__} and "
            f"{type(kernel).__name__}"
        )
    check_strided(y, "y")
    check_strided(kernel, "kernel")
    if y.dtype not in SOLVE_DTYPES:
        raise TypeError(f"y must be a float32 or float64 tensor, got dtype {y.dtype}")
    if kernel.dtype != y.dtype:
        raise TypeError(f"kernel must have y's dtype {y.dtype}, got {kernel.dtype}")
    if y.dim() != 4 or y.shape[1] < 1:
        raise ValueError(
            f"y must have shape (batch, channels >= 1, height, width), got {tuple(y.shape)}"
        )
    channels = y.shape[1]
    shape = kernel.shape
    if (
        len(shape) != 4
        or shape[0] != channels
        or shape[1] != channels
        or shape[2] != shape[3]
        or shape[2] < 1
    ):
        raise ValueError(
            f"kernel must have shape ({channels}, {channels}, m, m) with m >= 1 for "
            f"y of shape {tuple(y.shape)}, got {tuple(shape)}"
        )
    if kernel.device != y.device:
        raise ValueError(f"kernel must be on y's device {y.device}, got {kernel.device}")
    if not isinstance(dilation, int) or isinstance(dilation, bool):
        raise TypeError(f"dilation must be an int, got {type(dilation).__name__}")
    if dilation < 1:
        raise ValueError(f"dilation must be a positive integer, got {dilation}")


def check_corner_diagonal(kernel: torch.Tensor) -> None:
    """Raise ``torch.linalg.LinAlgError`` if the corner tap of ``kernel`` has a zero diagonal entry.

    The solve divides by that diagonal: a zero makes the convolution singular. Only on the CPU:
    on an accelerator (see :func:`~normflows_emerging.solve.device.on_accelerator`) reading the
    diagonal would synchronise the host with the device on every solve, so nothing is checked
    and a zero gives inf/NaN values (the layers' diagonals ``exp(log_d)`` are never zero).
    """
    if device.on_accelerator(kernel):
        return
    diagonal = kernel[:, :, -1, -1].diagonal()
    zeros = (diagonal == 0).nonzero()
    if zeros.numel():
        o, corner = int(zeros[0, 0]), kernel.shape[-1] - 1
        raise torch.linalg.LinAlgError(
            f"the corner tap's diagonal entry kernel[{o}, {o}, {corner}, {corner}] is 0: "
            "the convolution is singular"
        )
