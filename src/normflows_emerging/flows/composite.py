"""Composition of flows that keeps the log-determinant on the input's device and dtype."""

from __future__ import annotations

import torch
from normflows.flows import Flow
from torch import nn


class Chain(Flow):
    """Flows applied one after the other.

    ``inverse`` (density direction) runs the flows in the given order, ``forward`` (sampling
    direction) runs their ``forward`` in reverse order, so ``Chain([a, b]).inverse(x)`` is
    ``b.inverse(a.inverse(x))``.

    Needed because ``normflows.flows.Composite`` (normflows 1.7) adds the log-dets in place into
    ``torch.zeros(batch)``, a float32 CPU tensor: that fails for CUDA inputs and rounds float64
    log-dets to float32. Here the sum lives on the input's device and dtype.

    ``forward`` and ``inverse`` take normflows' signature; the ``context`` they accept is ignored
    and not passed on (normflows' containers pass none). Choose a layer's solve with its
    ``solver`` attribute or :func:`normflows_emerging.use_backend`.
    """

    def __init__(self, flows):
        """Constructor

        Args:
          flows: iterable of ``normflows.flows.Flow``, in density (inverse) order
        """
        super().__init__()
        self.flows = nn.ModuleList(flows)

    @property
    def min_image_size(self) -> int:
        """Smallest image height and width the chain takes: the largest ``min_image_size`` of its
        flows (1 for flows without one), so that e.g. a ``PeriodicConv2d`` inside still makes
        ``build_glow`` refuse levels smaller than its kernel."""
        sizes = [getattr(flow, "min_image_size", None) for flow in self.flows]
        return max([1] + [size for size in sizes if size is not None])

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        """Sampling direction.

        Args:
          z: latent tensor, shape (batch, ...)
          context: ignored (normflows' signature, see the class docstring)

        Returns:
          x and log|det dx/dz| of shape (batch,)
        """
        log_det = z.new_zeros(z.shape[0])
        for flow in reversed(self.flows):
            z, ld = flow(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """Density direction.

        Args:
          x: data tensor, shape (batch, ...)
          context: ignored (normflows' signature, see the class docstring)

        Returns:
          z and log|det dz/dx| of shape (batch,)
        """
        log_det = x.new_zeros(x.shape[0])
        for flow in self.flows:
            x, ld = flow.inverse(x)
            log_det = log_det + ld
        return x, log_det
