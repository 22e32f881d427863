"""normflows-emerging: emerging, periodic and QR 1x1 invertible convolutions for normflows.

The layers are in :mod:`normflows_emerging.flows`, their triangular solves in
:mod:`normflows_emerging.solve` (both import only torch, numpy and normflows), faster solves in
:mod:`normflows_emerging.backends`. The nflows adapters live in :mod:`normflows_emerging.nflows`
(imported on demand, so nflows stays optional). The training application (command line,
datasets, checkpoints) is :mod:`normflows_emerging.app`, installed with the ``train`` extra; this
package never imports it.
"""

from . import backends  # noqa: F401  (registers the faster solves)
from .flows import (
    Chain,
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
    SquareAutoregressiveConv2d,
)
from .flows.grouped import grouped_weights
from .glow import GlowStep, replace_mixing
from .likelihood import bits_per_dim, bits_per_dim_from_nll
from .mixing import build_mixing, mixing_layers, register_mixing
from .multiscale import ImageMultiscaleFlow, build_glow, build_multiscale_flow
from .parameters import ParameterCount, count_parameters, register_free_entries
from .solve import (
    backend_names,
    inverse_backend,
    register_backend,
    solve_autoregressive,
    use_backend,
)

__version__ = "0.2.0.dev0"

# The registered backends at import (``backend_names()`` also sees ones registered later).
BACKENDS = backend_names()

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
    "backend_names",
    "bits_per_dim",
    "bits_per_dim_from_nll",
    "build_glow",
    "build_mixing",
    "count_parameters",
    "build_multiscale_flow",
    "grouped_weights",
    "inverse_backend",
    "mixing_layers",
    "register_backend",
    "register_free_entries",
    "register_mixing",
    "replace_mixing",
    "solve_autoregressive",
    "use_backend",
]
