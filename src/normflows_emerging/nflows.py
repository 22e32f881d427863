"""Adapters that use this package's layers as ``nflows`` transforms.

nflows' ``Transform.forward`` is the density direction (data → latent) and ``inverse`` the
sampling direction, the other way round from normflows. The adapters wrap the normflows layers
and flip the directions, so log-determinants are the same as the wrapped layer's:

    from nflows.transforms import CompositeTransform
    from normflows_emerging.nflows import EmergingConv2dTransform, QR1x1Transform

    transform = CompositeTransform([EmergingConv2dTransform(12), QR1x1Transform(12)])
    z, log_det = transform(x)  # x of shape (batch, 12, height, width)

This module needs nflows (``pip install nflows``); the rest of the package does not.
"""

from __future__ import annotations

from typing import Any

try:
    from nflows.transforms import Transform
except ImportError as error:
    raise ImportError(
        "normflows_emerging.nflows needs the nflows package: pip install nflows"
    ) from error

import torch
from normflows.flows import Flow

from .flows import EmergingConv2d, PeriodicConv2d, QR1x1


class FlowTransform(Transform):
    """Any ``normflows.flows.Flow`` as an ``nflows.transforms.Transform``.

    ``forward`` calls the flow's ``inverse`` (density direction) and ``inverse`` its ``forward``
    (sampling direction); log-determinants are the flow's, broadcast to shape (batch,). The
    wrapped layers are unconditional: ``context`` is accepted and ignored, as nflows' own
    unconditional transforms do, since nflows' ``CompositeTransform`` passes the context of a
    conditional model to every transform (condition the transforms around the adapter, e.g.
    a coupling network, on it).
    """

    def __init__(self, flow: Flow):
        """Constructor

        Args:
          flow: ``normflows.flows.Flow`` to wrap, available as ``self.flow``

        Raises:
          TypeError: if ``flow`` is not a ``normflows.flows.Flow``
        """
        if not isinstance(flow, Flow):
            raise TypeError(
                f"FlowTransform wraps a normflows.flows.Flow, got {type(flow).__name__}"
            )
        super().__init__()
        self.flow = flow

    def forward(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction.

        Args:
          inputs: data, shape (batch, ...)
          context: ignored (the transform is unconditional)

        Returns:
          outputs and log|det d outputs/d inputs| of shape (batch,)
        """
        return _per_example(*self.flow.inverse(inputs))

    def inverse(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction.

        Args:
          inputs: latents, shape (batch, ...)
          context: ignored (the transform is unconditional)

        Returns:
          outputs and log|det d outputs/d inputs| of shape (batch,)
        """
        return _per_example(*self.flow(inputs))


def _per_example(
    outputs: torch.Tensor, log_det: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast a flow's log_det (a scalar for some normflows flows) to shape (batch,).

    Raises ValueError for any other shape, which broadcasting would silently turn into a matrix.
    """
    batch = outputs.shape[0]
    if isinstance(log_det, torch.Tensor) and log_det.shape not in ((), (1,), (batch,)):
        raise ValueError(
            f"the wrapped flow returned a log_det of shape {tuple(log_det.shape)}; expected a "
            f"scalar or shape ({batch},)"
        )
    return outputs, outputs.new_zeros(batch) + log_det


class EmergingConv2dTransform(FlowTransform):
    """``EmergingConv2d`` as an nflows transform on (batch, C, H, W)."""

    def __init__(
        self, num_channels: int, kernel_size: int = 3, one_by_one: str = "qr", solver: str = "auto"
    ):
        """Constructor

        Args:
          num_channels, kernel_size, one_by_one, solver: those of :class:`EmergingConv2d`
        """
        super().__init__(
            EmergingConv2d(
                num_channels, kernel_size=kernel_size, one_by_one=one_by_one, solver=solver
            )
        )


class PeriodicConv2dTransform(FlowTransform):
    """``PeriodicConv2d`` as an nflows transform on (batch, C, H, W)."""

    def __init__(self, num_channels: int, kernel_size: int = 3, bias: bool = True):
        """Constructor

        Args:
          num_channels, kernel_size, bias: those of :class:`PeriodicConv2d`
        """
        super().__init__(PeriodicConv2d(num_channels, kernel_size=kernel_size, bias=bias))


class QR1x1Transform(FlowTransform):
    """``QR1x1`` as an nflows transform on (batch, C, H, W)."""

    def __init__(self, num_channels: int, num_reflections: int | None = None):
        """Constructor

        Args:
          num_channels, num_reflections: those of :class:`QR1x1`
        """
        super().__init__(QR1x1(num_channels, num_reflections=num_reflections))
