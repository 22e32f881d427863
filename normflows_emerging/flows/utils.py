"""Input and output checks and small constructors shared by the flows of this package.

Dtype and device rule (every layer): the input must have the dtype and device of the layer's
parameters. A mismatch is a ``TypeError`` (dtype) or ``ValueError`` (device) naming both, never
a silent cast: convert the layer (``layer.double()``, ``layer.to(device)``) or the input.
"""

import math
import warnings

import torch
from normflows.flows import Invertible1x1Conv


def check_image(x: torch.Tensor, num_channels: int, layer: str, like: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is an image batch the layer can take.

    Args:
      x: tensor that should have shape (batch, num_channels, height, width)
      num_channels: channel count the layer was built for
      layer: the layer's name, used in the message
      like: one of the layer's parameters; ``x`` must have its dtype and device

    Raises:
      TypeError: if ``x`` is not a floating-point tensor or its dtype differs from ``like``'s
      ValueError: if ``x`` is not 4-D, has the wrong number of channels or lives on another
        device than ``like``
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
    if x.dtype != like.dtype:
        raise TypeError(
            f"{layer} has {like.dtype} parameters but got a {x.dtype} input; convert one of them "
            f"(e.g. layer.to({x.dtype}) or x.to({like.dtype}))"
        )
    if x.device != like.device:
        raise ValueError(
            f"{layer} has parameters on {like.device} but got an input on {x.device}; move one "
            f"of them (e.g. layer.to(x.device))"
        )


def check_finite_output(output: torch.Tensor, given: torch.Tensor, layer: str) -> None:
    """Raise if a sampling step turned a finite input into a non-finite output.

    One reduction and one Python float in the common case (the sum of a finite output is finite
    unless it overflows; only then are the elements looked at).

    Args:
      output: the layer's output
      given: the layer's input
      layer: the layer's name, used in the message

    Raises:
      torch.linalg.LinAlgError: if ``output`` has inf or NaN entries while ``given`` has none
    """
    with torch.no_grad():
        if math.isfinite(output.sum().item()):
            return
        if torch.isfinite(output).all() or not torch.isfinite(given).all():
            return
    raise torch.linalg.LinAlgError(
        f"{layer}: inverting the layer turned a finite input into inf/NaN values; its current "
        f"parameters make the inverse numerically singular (overflow), so no sample is returned"
    )


def plu_1x1_conv(num_channels: int) -> Invertible1x1Conv:
    """normflows' LU-parametrised ``Invertible1x1Conv``, built without its ``torch.lu`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")
        return Invertible1x1Conv(num_channels, use_lu=True)
