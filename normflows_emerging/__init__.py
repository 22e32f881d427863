"""normflows-emerging: emerging, periodic and QR 1x1 invertible convolutions for normflows.

The nflows adapters live in :mod:`normflows_emerging.nflows` (imported on demand, so nflows stays
optional); datasets in :mod:`normflows_emerging.data`; training in :mod:`normflows_emerging.train`,
evaluation and sampling in :mod:`normflows_emerging.evaluation`, checkpoint writing and random
state in :mod:`normflows_emerging.checkpoint`.
"""

from .flows import (
    Chain,
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)
from .glow import GlowStep, replace_mixing
from .inverse import BACKENDS, inverse_backend, solve_autoregressive, use_backend
from .likelihood import bits_per_dim, bits_per_dim_from_nll
from .mixing import build_mixing, mixing_layers, register_mixing
from .multiscale import ImageMultiscaleFlow, build_glow, build_multiscale_flow
from .parameters import ParameterCount, count_parameters, register_free_entries

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Chain",
    "EmergingConv2d",
    "GlowStep",
    "ImageMultiscaleFlow",
    "MaskedAffineAutoregressiveConv2d",
    "ParameterCount",
    "PeriodicConv2d",
    "QR1x1",
    "SquareAutoregressiveConv2d",
    "bits_per_dim",
    "bits_per_dim_from_nll",
    "build_glow",
    "build_mixing",
    "count_parameters",
    "build_multiscale_flow",
    "inverse_backend",
    "mixing_layers",
    "register_free_entries",
    "register_mixing",
    "replace_mixing",
    "solve_autoregressive",
    "use_backend",
]
