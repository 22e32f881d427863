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

try:
    from nflows.transforms import Transform
except ImportError as error:
    raise ImportError(
        "normflows_emerging.nflows needs the nflows package: pip install nflows"
    ) from error

from .flows.emerging import EmergingConv2d
from .flows.periodic_conv import PeriodicConv2d
from .flows.qr import QR1x1


class FlowTransform(Transform):
    """Any ``normflows.flows.Flow`` as an ``nflows.transforms.Transform``.

    ``forward`` calls the flow's ``inverse`` (density direction) and ``inverse`` its ``forward``
    (sampling direction). The flow is unconditional: ``context`` is ignored.
    """

    def __init__(self, flow):
        """Constructor

        Args:
          flow: ``normflows.flows.Flow`` to wrap, available as ``self.flow``
        """
        super().__init__()
        self.flow = flow

    def forward(self, inputs, context=None):
        """Density direction.

        Args:
          inputs: data, shape (batch, ...)
          context: ignored

        Returns:
          outputs and log|det d outputs/d inputs| of shape (batch,)
        """
        return _per_example(*self.flow.inverse(inputs))

    def inverse(self, inputs, context=None):
        """Sampling direction.

        Args:
          inputs: latents, shape (batch, ...)
          context: ignored

        Returns:
          outputs and log|det d outputs/d inputs| of shape (batch,)
        """
        return _per_example(*self.flow(inputs))


def _per_example(outputs, log_det):
    """Broadcast a flow's log_det (a scalar for some normflows flows) to shape (batch,)."""
    return outputs, outputs.new_zeros(outputs.shape[0]) + log_det


class EmergingConv2dTransform(FlowTransform):
    """``EmergingConv2d`` as an nflows transform on tensors of shape (batch, C, H, W)."""

    def __init__(self, num_channels, kernel_size=3, **kwargs):
        """Constructor

        Args:
          num_channels: number of channels C
          kernel_size: odd kernel size, at least 3
          **kwargs: further arguments of ``EmergingConv2d``
        """
        super().__init__(EmergingConv2d(num_channels, kernel_size, **kwargs))


class PeriodicConv2dTransform(FlowTransform):
    """``PeriodicConv2d`` as an nflows transform on tensors of shape (batch, C, H, W)."""

    def __init__(self, num_channels, kernel_size=3, **kwargs):
        """Constructor

        Args:
          num_channels: number of channels C
          kernel_size: kernel size
          **kwargs: further arguments of ``PeriodicConv2d``
        """
        super().__init__(PeriodicConv2d(num_channels, kernel_size, **kwargs))


class QR1x1Transform(FlowTransform):
    """``QR1x1`` as an nflows transform on tensors of shape (batch, C, H, W)."""

    def __init__(self, num_channels, **kwargs):
        """Constructor

        Args:
          num_channels: number of channels C
          **kwargs: further arguments of ``QR1x1``
        """
        super().__init__(QR1x1(num_channels, **kwargs))
