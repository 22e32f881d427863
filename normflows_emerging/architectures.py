"""The model-building names under their 0.1 module path; they now live in their own modules.

Kept so that scripts importing ``normflows_emerging.architectures`` keep working. New code imports
from ``normflows_emerging`` or from the modules below:

* :mod:`normflows_emerging.mixing`: ``register_mixing``, ``mixing_layers``, ``build_mixing``
* :mod:`normflows_emerging.glow`: ``GlowStep``, ``replace_mixing``
* :mod:`normflows_emerging.multiscale`: ``build_multiscale_flow``, ``build_glow``
* :mod:`normflows_emerging.likelihood`: ``bits_per_dim``, ``bits_per_dim_from_nll``
"""

from .glow import GlowStep, replace_mixing
from .likelihood import bits_per_dim, bits_per_dim_from_nll
from .mixing import build_mixing, mixing_layers, register_mixing
from .multiscale import build_glow, build_multiscale_flow

__all__ = [
    "GlowStep",
    "bits_per_dim",
    "bits_per_dim_from_nll",
    "build_glow",
    "build_mixing",
    "build_multiscale_flow",
    "mixing_layers",
    "register_mixing",
    "replace_mixing",
]
