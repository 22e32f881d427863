"""normflows-emerging: emerging, periodic and QR 1x1 invertible convolutions for normflows."""

from .flows import Chain, EmergingConv2d, QR1x1, SquareAutoregressiveConv2d
from .inverse import BACKENDS, inverse_backend, solve_autoregressive, use_backend

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Chain",
    "EmergingConv2d",
    "QR1x1",
    "SquareAutoregressiveConv2d",
    "inverse_backend",
    "solve_autoregressive",
    "use_backend",
]
