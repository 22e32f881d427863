"""Input checks and small constructors shared by the flows of this package."""

import warnings

import torch
from normflows.flows import Invertible1x1Conv


def check_image(x, num_channels, layer):
    """Raise a clear error unless ``x`` is a float image batch with ``num_channels`` channels.

    Args:
      x: tensor that should have shape (batch, num_channels, height, width)
      num_channels: channel count the layer was built for
      layer: the layer's name, used in the message

    Raises:
      TypeError: if ``x`` is not a floating-point tensor
      ValueError: if ``x`` is not 4-D or has the wrong number of channels
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(
            f"{layer} expects a tensor of shape (batch, {num_channels}, height, width), "
            f"got shape {tuple(x.shape)}"
        )


def plu_1x1_conv(num_channels):
    """normflows' LU-parametrised ``Invertible1x1Conv``, built without its ``torch.lu`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")
        return Invertible1x1Conv(num_channels, use_lu=True)
