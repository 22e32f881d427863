"""Square autoregressive convolution: a masked k x k convolution with a triangular Jacobian."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from torch import nn

from ..solve import solve_autoregressive
from .arguments import check_bool, check_positive_int
from .bounded import accept_unbounded_checkpoints, bounded_log_scale
from .cache import DropsCacheOnModeChange, ValueKeyedCache, cached, reusable
from .grouped import group_key, grouped
from .precision import full_precision
from .solver import autoregressive_solvers, check_solver, chosen_backend
from .utils import (
    check_finite_output,
    check_image,
    empty_result,
    is_empty,
    register_constant_buffer,
)


class SquareAutoregressiveConv2d(DropsCacheOnModeChange, Flow):
    """Invertible masked square convolution (one half of an emerging convolution).

    From Hoogeboom, van den Berg, Welling, "Emerging Convolutions for Generative Normalizing
    Flows", ICML 2019, section 3.1, https://arxiv.org/abs/1901.11137

    With ``flip=False`` output pixel (i, j) reads the ``size x size`` window whose bottom-right
    corner is (i, j) (zero outside the image)::

        y[o, i, j] = b[o] + sum_{c, a, d} W[o, c, a, d] x[c, i - dil*(size-1-a), j - dil*(size-1-d)]

    All taps are dense except the corner tap, which is lower-triangular in (out, in) with
    diagonal ``exp(log_d)``, ``log_d = 10 tanh(raw_log_d / 10)`` (see
    :mod:`normflows_emerging.flows.bounded`: the diagonal stays in (4.5e-5, 2.2e4), so it never
    rounds to 0). In raster order with ascending channels the Jacobian is triangular, so
    ``log|det| = H * W * sum(log_d)``. ``flip=True`` is the mirror image: the window's top-left
    corner is (i, j), the corner tap upper-triangular, solved in reverse order.

    ``inverse`` (density direction) is one convolution; ``forward`` (sampling direction) solves it
    by forward substitution (see :mod:`normflows_emerging.solve`).
    """

    def __init__(
        self,
        num_channels: int,
        size: int = 2,
        flip: bool = False,
        dilation: int = 1,
        solver: str = "auto",
    ):
        """Constructor

        Args:
          num_channels: number of channels C of the input
          size: side m of the square window
          flip: mirror the window (top-left corner at the output pixel)
          dilation: spacing of the taps
          solver: backend of the sampling solve, ``"auto"`` (the default of
            :func:`normflows_emerging.inverse_backend`), ``"compiled"``, ``"torch"`` or
            ``"naive"``; also settable later as the ``solver`` attribute.
            :func:`normflows_emerging.use_backend` overrides it.

        The ``mask`` and ``corner_diagonal`` buffers follow from the arguments: they are not
        saved in the state dict, and ones in older checkpoints are ignored when loading.

        Raises:
          ValueError: unless size, channel count and dilation are positive ints (bools refused,
            numpy ints accepted), or for an unknown solver
          TypeError: if ``flip`` is not a bool
        """
        super().__init__()
        num_channels = check_positive_int("num_channels", num_channels)
        size = check_positive_int("size", size)
        dilation = check_positive_int("dilation", dilation)
        flip = check_bool("flip", flip)
        self.num_channels, self.size, self.flip, self.dilation = num_channels, size, flip, dilation
        self.solver = solver
        # Parameters are stored in causal (flip=False) orientation; flip=True mirrors them.
        std = 0.1 / (num_channels * size * size) ** 0.5
        self.weight = nn.Parameter(torch.randn(num_channels, num_channels, size, size) * std)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.raw_log_d = nn.Parameter(torch.zeros(num_channels))
        accept_unbounded_checkpoints(self, "log_d", "raw_log_d")
        mask = torch.ones(num_channels, num_channels, size, size)
        mask[:, :, -1, -1] = torch.ones(num_channels, num_channels).tril(-1)
        register_constant_buffer(self, "mask", mask)
        corner_diagonal = torch.zeros(num_channels, num_channels, size, size)
        corner_diagonal[:, :, -1, -1] = torch.eye(num_channels)
        register_constant_buffer(self, "corner_diagonal", corner_diagonal)
        self._cache = ValueKeyedCache()

    @property
    def solver(self) -> str:
        """Backend of the sampling solve (see the constructor)."""
        return self._solver

    @solver.setter
    def solver(self, value: str) -> None:
        self._solver = check_solver(value, autoregressive_solvers())

    @property
    def log_d(self) -> torch.Tensor:
        """Log of the corner tap's diagonal, shape (C,), inside (-10, 10)."""
        return bounded_log_scale(self.raw_log_d)

    def kernel_parameters(self) -> list[torch.Tensor]:
        """The parameters ``causal_kernel`` is computed from (the bias is not among them)."""
        return [self.weight, self.raw_log_d]

    def constants(self) -> list[torch.Tensor]:
        """The constant buffers ``causal_kernel`` reads besides the parameters (mask, diagonal)."""
        return [self.mask, self.corner_diagonal]

    def causal_kernel(self) -> torch.Tensor:
        """Kernel (C, C, m, m) in causal orientation: masked weight, ``exp(log_d)`` on the corner.

        With ``flip=True`` the layer convolves with this kernel reversed in all four axes.
        """
        return self._assemble(self.log_d)

    def _assemble(self, log_d):
        return assemble_kernel(self.weight, log_d, self.mask, self.corner_diagonal)

    def _kernel_and_log_d_sum(self):
        """``causal_kernel()`` and ``log_d.sum()``; in eval mode without gradients to the
        parameters, computed once for as long as the parameters keep their values."""

        def compute():
            log_d = self.log_d
            return {"kernel": self._assemble(log_d), "log_d_sum": log_d.sum()}

        found = cached(self, self.kernel_parameters(), "kernel", compute, self.constants())
        return found["kernel"], found["log_d_sum"]

    @staticmethod
    def _log_det(log_d_sum, x):
        return (log_d_sum * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    @full_precision
    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction: the masked convolution.

        Args:
          x: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          y of the same shape and log|det dy/dx| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
        """
        return self.premixed_inverse(x, None)

    @full_precision
    def premixed_inverse(
        self, x: torch.Tensor, premix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction after a 1x1 convolution: ``inverse(M x)`` with one convolution less.

        Args:
          x: tensor of shape (batch, C, H, W), the layer's dtype and device
          premix: (C, C) matrix M of a 1x1 convolution applied to x first, or None (then this is
            :meth:`inverse`). It is folded into the kernel (zero padding commutes with M); the
            returned log_det is still this layer's alone. :class:`EmergingConv2d` folds its QR
            1x1 layer in this way.

        Returns:
          y of the same shape and log|det dy/d(Mx)| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
        """
        check_image(x, self.num_channels, type(self).__name__, self.weight)
        if is_empty(x):
            return empty_result(x)
        if premix is None and not reusable(self, self.kernel_parameters()):
            planned = grouped(self, x.shape[2] * x.shape[3])
            if planned is not None:
                density_kernel, log_det = planned
                return self.convolve(x, density_kernel), log_det.expand(x.shape[0])
        kernel, log_d_sum = self._kernel_and_log_d_sum()
        return self.convolve(x, self.density_kernel(kernel, premix)), self._log_det(log_d_sum, x)

    def density_kernel(
        self, kernel: torch.Tensor, premix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The filter :meth:`convolve` applies: ``kernel`` (from :meth:`causal_kernel`) reversed
        in all four axes for ``flip=True``, with the (C, C) matrix ``premix`` folded into its
        input channels (see :meth:`premixed_inverse`). Also for stacks of kernels (..., C, C,
        m, m) and matrices (..., C, C)."""
        if self.flip:
            kernel = kernel.flip(-4, -3, -2, -1)
        if premix is not None:
            # contiguous: a permuted kernel would make conv2d return a channels-last output
            kernel = torch.einsum("...oeab,...ec->...ocab", kernel, premix).contiguous()
        return kernel

    def convolve(self, x: torch.Tensor, density_kernel: torch.Tensor) -> torch.Tensor:
        """The density direction's output for a filter from :meth:`density_kernel`, unchecked.

        For callers that have checked ``x`` (a non-empty (batch, C, H, W) tensor of the layer's
        dtype and device), as :meth:`inverse` and :class:`EmergingConv2d` do.
        """
        # As in the solve: taps at least max(H, W) away read only padding, whatever the dilation,
        # so capping it keeps the padding small (a huge dilation would overflow its size).
        dilation = min(self.dilation, max(x.shape[2], x.shape[3]))
        pad = dilation * (self.size - 1)
        x_padded = F.pad(x, (0, pad, 0, pad) if self.flip else (pad, 0, pad, 0))
        return F.conv2d(x_padded, density_kernel, self.bias, dilation=dilation)

    @full_precision
    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: solve the convolution by forward substitution.

        The solve is the layer's ``solver``, or the one of :func:`normflows_emerging.use_backend`
        around the call.

        Args:
          z: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          x of the same shape and log|det dx/dz| (= -log|det dz/dx|) of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if the solve overflows (finite z, non-finite x); checked
            on the CPU only (on a GPU reading the result would synchronise: the inf/NaN values
            are returned, see ``docs/gpu.md``)
        """
        check_image(z, self.num_channels, type(self).__name__, self.weight)
        if is_empty(z):
            return empty_result(z)
        kernel, log_d_sum = self._kernel_and_log_d_sum()
        x = self.solve(z, kernel)
        check_finite_output(x, z, type(self).__name__)
        return x, -self._log_det(log_d_sum, z)

    def solve(self, z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """The sampling direction's x for a kernel assembled by the caller, without the checks.

        For callers that have checked ``z`` (a non-empty (batch, C, H, W) tensor of the layer's
        dtype and device) and check the output themselves, as :class:`EmergingConv2d` does.

        Args:
          z: the layer's output
          kernel: ``causal_kernel()``, or a copy computed from the same parameter values
        """
        rhs = z - self.bias.view(-1, 1, 1)
        if self.flip:
            rhs = rhs.flip(1, 2, 3)
        x = solve_autoregressive(rhs, kernel, self.dilation, chosen_backend(self.solver))
        return x.flip(1, 2, 3) if self.flip else x

    def _group_key(self):
        return group_key(self, SquareAutoregressiveConv2d, self.size, self.flip)

    def _grouped_submodules(self):
        return []

    def _grouped_parameters(self):
        return self.kernel_parameters()

    @staticmethod
    def _derive_group(layers, pixels):
        """Density filter and log-det per image, ``pixels * sum(log_d)``, of each layer in
        ``layers`` (of one shape and orientation), computed together (see
        :mod:`normflows_emerging.flows.grouped`)."""
        kernels, log_d = stacked_kernels(layers)
        filters = layers[0].density_kernel(kernels)
        return list(zip(filters.unbind(0), (log_d.sum(-1) * pixels).unbind(0)))

    def extra_repr(self):
        return (
            f"num_channels={self.num_channels}, size={self.size}, flip={self.flip}, "
            f"dilation={self.dilation}, solver={self.solver!r}"
        )


def assemble_kernel(
    weight: torch.Tensor, log_d: torch.Tensor, mask: torch.Tensor, corner_diagonal: torch.Tensor
) -> torch.Tensor:
    """Masked weight with ``exp(log_d)`` on the corner tap's diagonal (causal orientation).

    Args:
      weight: (..., C, C, m, m)
      log_d: (..., C)
      mask, corner_diagonal: a layer's constant buffers, (C, C, m, m)
    """
    # where, not weight * mask: an inf/NaN in an entry the mask drops must not reach the kernel
    # (inf * 0 is NaN), since the solve never reads it either
    unmasked = torch.where(mask != 0, weight, 0.0)
    return unmasked + corner_diagonal * log_d.exp()[..., None, None, None]


def stacked_kernels(layers) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal kernels (N, C, C, m, m) and log_d (N, C) of the autoregressive layers ``layers``
    (one shape, dtype and device): one batched computation for all of them."""
    weight = torch.stack([layer.weight for layer in layers])
    log_d = bounded_log_scale(torch.stack([layer.raw_log_d for layer in layers]))
    return assemble_kernel(weight, log_d, layers[0].mask, layers[0].corner_diagonal), log_d
