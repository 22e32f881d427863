"""Kernels and the forward convolution shared by the solve tests."""

import torch
import torch.nn.functional as F


def random_causal_kernel(channels, size, dtype, upper=0.0, generator=None):
    """A well-conditioned (C, C, m, m) causal kernel: corner diagonal in [0.5, 1.5), other entries
    scaled by 1 / sqrt(C m m) so that solutions stay of the size of the right-hand side.

    Args:
      upper: scale of random values put above the corner's diagonal, which every solve must ignore
    """
    scale = 0.5 / (channels * size * size) ** 0.5
    kernel = torch.randn(channels, channels, size, size, dtype=dtype, generator=generator) * scale
    corner = kernel[:, :, -1, -1]
    diagonal = torch.rand(channels, dtype=dtype, generator=generator) + 0.5
    kernel[:, :, -1, -1] = corner.tril(-1) + torch.diag(diagonal) + corner.triu(1) * upper
    return kernel


def causal_conv(x, kernel, dilation=1):
    """The convolution the solves invert; reads only the corner tap's lower triangle + diagonal."""
    kernel = kernel.clone()
    kernel[:, :, -1, -1] = kernel[:, :, -1, -1].tril()
    pad = dilation * (kernel.shape[-1] - 1)
    return F.conv2d(F.pad(x, (pad, 0, pad, 0)), kernel, dilation=dilation)
