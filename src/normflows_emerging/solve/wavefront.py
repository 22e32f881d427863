"""Torch solve over anti-diagonals: runs on any device (the default for CUDA tensors)."""

import torch

from .checks import check_corner_diagonal


def solve_wavefront(y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel) = y`` in ``H + W - 1`` batched steps.

    Every tap other than the corner reads a pixel on an earlier anti-diagonal ``i + j``, so all
    pixels of one anti-diagonal can be solved together: gather their solved neighbours, subtract
    the product with the non-corner taps, then one triangular solve with the corner tap.

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted
      kernel: (C, C, m, m) causal kernel whose corner tap is lower-triangular
      dilation: spacing of the taps

    Returns:
      x of shape (B, C, H, W)

    Raises:
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal (other inputs are checked
        by :func:`~normflows_emerging.solve.solve_autoregressive`)
    """
    check_corner_diagonal(kernel)
    batch, channels, height, width = y.shape
    size = kernel.shape[-1]
    pad = dilation * (size - 1)
    corner = kernel[:, :, -1, -1].tril()
    # Non-corner taps as one (C_out, C_in * taps) matrix, taps ordered like the gathered window.
    taps = kernel.reshape(channels, channels, size * size)[:, :, :-1]
    taps = taps.reshape(channels, -1)
    offsets = torch.arange(size, device=y.device) * dilation
    tap_rows = offsets.repeat_interleave(size)[:-1]
    tap_cols = offsets.repeat(size)[:-1]

    x_padded = y.new_zeros(batch, channels, height + pad, width + pad)
    for diagonal in range(height + width - 1):
        rows = torch.arange(
            max(0, diagonal - width + 1), min(diagonal, height - 1) + 1, device=y.device
        )
        cols = diagonal - rows
        # window[b, c, n, tap] = x at tap of the n-th pixel; padded coordinates shift by ``pad``.
        window = x_padded[:, :, rows[:, None] + tap_rows, cols[:, None] + tap_cols]
        window = window.permute(0, 2, 1, 3).reshape(batch, rows.numel(), -1)
        rhs = y[:, :, rows, cols].transpose(1, 2) - window @ taps.T
        solved = torch.linalg.solve_triangular(corner, rhs.transpose(1, 2), upper=False)
        x_padded[:, :, rows + pad, cols + pad] = solved
    return x_padded[:, :, pad:, pad:].contiguous()
