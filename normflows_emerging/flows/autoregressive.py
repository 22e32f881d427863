"""Square autoregressive convolution: a masked k x k convolution with a triangular Jacobian."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from normflows.flows import Flow

from ..inverse import solve_autoregressive
from .utils import check_image


def _check_positive_int(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class SquareAutoregressiveConv2d(Flow):
    """Invertible masked square convolution (one half of an emerging convolution).

    With ``flip=False`` output pixel (i, j) reads the ``size x size`` window whose bottom-right
    corner is (i, j) (zero outside the image)::

        y[o, i, j] = b[o] + sum_{c, a, d} W[o, c, a, d] x[c, i - dil*(size-1-a), j - dil*(size-1-d)]

    All taps are dense except the corner tap, which is lower-triangular in (out, in) with
    diagonal ``exp(log_d)``. In raster order with ascending channels the Jacobian is triangular,
    so ``log|det| = H * W * sum(log_d)``. ``flip=True`` is the mirror image: the window's
    top-left corner is (i, j), the corner tap upper-triangular, solved in reverse order.

    ``inverse`` (density direction) is one convolution; ``forward`` (sampling direction) solves it
    by forward substitution with the backend chosen by :func:`normflows_emerging.inverse_backend`.
    """

    def __init__(self, num_channels, size=2, flip=False, dilation=1):
        """Constructor

        Args:
          num_channels: number of channels C of the input
          size: side m of the square window
          flip: mirror the window (top-left corner at the output pixel)
          dilation: spacing of the taps
        """
        super().__init__()
        _check_positive_int(num_channels, "num_channels")
        _check_positive_int(size, "size")
        _check_positive_int(dilation, "dilation")
        self.num_channels, self.size, self.flip, self.dilation = num_channels, size, flip, dilation
        # Parameters are stored in causal (flip=False) orientation; flip=True mirrors them.
        std = 0.1 / (num_channels * size * size) ** 0.5
        self.weight = nn.Parameter(torch.randn(num_channels, num_channels, size, size) * std)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_d = nn.Parameter(torch.zeros(num_channels))
        mask = torch.ones(num_channels, num_channels, size, size)
        mask[:, :, -1, -1] = torch.ones(num_channels, num_channels).tril(-1)
        self.register_buffer("mask", mask)
        corner_diagonal = torch.zeros(num_channels, num_channels, size, size)
        corner_diagonal[:, :, -1, -1] = torch.eye(num_channels)
        self.register_buffer("corner_diagonal", corner_diagonal)

    def causal_kernel(self):
        """Kernel (C, C, m, m) in causal orientation: masked weight, ``exp(log_d)`` on the corner.

        With ``flip=True`` the layer convolves with this kernel reversed in all four axes.
        """
        return self.weight * self.mask + self.corner_diagonal * self.log_d.exp()[:, None, None, None]

    def _log_det(self, x):
        return (self.log_d.sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, x):
        """Density direction: the masked convolution.

        Args:
          x: tensor of shape (batch, C, H, W)

        Returns:
          y of the same shape and log|det dy/dx| of shape (batch,)
        """
        check_image(x, self.num_channels, type(self).__name__)
        kernel = self.causal_kernel()
        pad = self.dilation * (self.size - 1)
        if self.flip:
            x_padded, kernel = F.pad(x, (0, pad, 0, pad)), kernel.flip(0, 1, 2, 3)
        else:
            x_padded = F.pad(x, (pad, 0, pad, 0))
        y = F.conv2d(x_padded, kernel, self.bias, dilation=self.dilation)
        return y, self._log_det(x)

    def forward(self, z, backend=None):
        """Sampling direction: solve the convolution by forward substitution.

        Args:
          z: tensor of shape (batch, C, H, W)
          backend: ``"compiled"``, ``"torch"``, ``"naive"`` or None for the default

        Returns:
          x of the same shape and log|det dx/dz| (= -log|det dz/dx|) of shape (batch,)
        """
        check_image(z, self.num_channels, type(self).__name__)
        rhs = z - self.bias[:, None, None]
        if self.flip:
            rhs = rhs.flip(1, 2, 3)
        x = solve_autoregressive(rhs, self.causal_kernel(), self.dilation, backend)
        if self.flip:
            x = x.flip(1, 2, 3)
        return x, -self._log_det(z)

    def extra_repr(self):
        return (f"num_channels={self.num_channels}, size={self.size}, flip={self.flip}, "
                f"dilation={self.dilation}")
