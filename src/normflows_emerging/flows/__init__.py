"""Invertible convolutions as ``normflows.flows.Flow`` layers, one family per module."""

from .actnorm import ActNorm
from .autoregressive import SquareAutoregressiveConv2d
from .composite import Chain
from .emerging import EmergingConv2d
from .maf import MaskedAffineAutoregressiveConv2d
from .periodic_conv import PeriodicConv2d
from .qr import QR1x1

__all__ = [
    "ActNorm",
    "Chain",
    "EmergingConv2d",
    "MaskedAffineAutoregressiveConv2d",
    "PeriodicConv2d",
    "QR1x1",
    "SquareAutoregressiveConv2d",
]
