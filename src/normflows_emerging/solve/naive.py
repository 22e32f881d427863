"""Reference solve: element by element, in the plainest form (tests, benchmark baseline)."""

import torch

from .checks import check_corner_diagonal


def solve_naive(y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel) = y`` one output element at a time.

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted
      kernel: (C, C, m, m) causal kernel whose corner tap is lower-triangular
      dilation: spacing of the taps

    Returns:
      x of shape (B, C, H, W); built from separate tensors (no in-place writes), so autograd can
      differentiate through it, which the tests use as the unrolled reference gradient

    Raises:
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal (other inputs are checked
        by :func:`~normflows_emerging.solve.solve_autoregressive`)
    """
    check_corner_diagonal(kernel)
    _, channels, height, width = y.shape
    size = kernel.shape[-1]
    corner = size - 1
    x = [[[None] * width for _ in range(height)] for _ in range(channels)]  # x[c][i][j]: (B,)
    for i in range(height):
        for j in range(width):
            for o in range(channels):
                total = y[:, o, i, j]
                for a in range(size):
                    for d in range(size):
                        ii = i - (corner - a) * dilation
                        jj = j - (corner - d) * dilation
                        if ii < 0 or jj < 0:
                            continue
                        solved = o if (a, d) == (corner, corner) else channels
                        for c in range(solved):
                            total = total - kernel[o, c, a, d] * x[c][ii][jj]
                x[o][i][j] = total / kernel[o, o, corner, corner]
    return torch.stack([torch.stack([torch.stack(row, -1) for row in plane], -2) for plane in x], 1)
