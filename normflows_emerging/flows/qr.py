"""QR-parametrised invertible 1x1 convolution."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from normflows.flows import Flow

from .utils import check_image


class QR1x1(Flow):
    """Invertible 1x1 convolution ``W = Q R``.

    ``Q`` is a product of Householder reflections ``I - 2 v v^T / v^T v`` (orthogonal, so it adds
    nothing to the log-determinant) and ``R`` is upper-triangular with diagonal ``exp(log_s)``,
    hence ``log|det| = H * W * sum(log_s)``. ``inverse`` (density direction) applies ``W``,
    ``forward`` (sampling direction) applies ``W^-1 = R^-1 Q^T``.
    """

    def __init__(self, num_channels, num_reflections=None):
        """Constructor

        Args:
          num_channels: number of channels C
          num_reflections: Householder vectors in Q (default C, enough for any orthogonal
            matrix up to reflection); 0 makes Q the identity
        """
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
        if num_reflections is None:
            num_reflections = num_channels
        if not isinstance(num_reflections, int) or num_reflections < 0:
            raise ValueError(f"num_reflections must be a non-negative integer, got "
                             f"{num_reflections!r}")
        self.num_channels, self.num_reflections = num_channels, num_reflections
        self.reflections = nn.Parameter(torch.randn(num_reflections, num_channels))
        self.upper = nn.Parameter(torch.zeros(num_channels, num_channels))
        self.log_s = nn.Parameter(torch.zeros(num_channels))

    def orthogonal(self):
        """Q = H_1 H_2 ... H_n as a (C, C) matrix, multiplied pairwise in a tree."""
        eye = torch.eye(self.num_channels, dtype=self.log_s.dtype, device=self.log_s.device)
        v = self.reflections
        factors = eye - 2 * v[:, :, None] * v[:, None, :] / (v * v).sum(1)[:, None, None]
        if factors.shape[0] == 0:
            return eye
        while factors.shape[0] > 1:
            if factors.shape[0] % 2:
                factors = torch.cat([factors, eye[None]])
            factors = factors[0::2] @ factors[1::2]
        return factors[0]

    def triangular(self):
        """R: (C, C) upper-triangular with diagonal exp(log_s)."""
        return self.upper.triu(1) + torch.diag(self.log_s.exp())

    def weight(self):
        """W = Q R, shape (C, C); ``inverse`` computes ``y[:, o] = sum_c W[o, c] x[:, c]``."""
        return self.orthogonal() @ self.triangular()

    def _log_det(self, x):
        return (self.log_s.sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, x):
        """Density direction: apply W.

        Args:
          x: tensor of shape (batch, C, H, W)

        Returns:
          W x of the same shape and log|det| = H * W * sum(log_s), shape (batch,)
        """
        check_image(x, self.num_channels, type(self).__name__)
        return F.conv2d(x, self.weight()[:, :, None, None]), self._log_det(x)

    def forward(self, z):
        """Sampling direction: apply W^-1 = R^-1 Q^T.

        Args:
          z: tensor of shape (batch, C, H, W)

        Returns:
          W^-1 z of the same shape and -H * W * sum(log_s), shape (batch,)
        """
        check_image(z, self.num_channels, type(self).__name__)
        weight_inv = torch.linalg.solve_triangular(self.triangular(), self.orthogonal().T,
                                                   upper=True)
        return F.conv2d(z, weight_inv[:, :, None, None]), -self._log_det(z)

    def extra_repr(self):
        return f"num_channels={self.num_channels}, num_reflections={self.num_reflections}"
