"""Invertible convolutions as ``normflows.flows.Flow`` layers, one family per module."""

from .autoregressive import SquareAutoregressiveConv2d
from .composite import Chain
from .emerging import EmergingConv2d
from .qr import QR1x1

__all__ = ["Chain", "EmergingConv2d", "QR1x1", "SquareAutoregressiveConv2d"]
