"""Registry of mixing layers: the invertible channel-mixing layer of a Glow step, by name.

In Glow the mixing layer is the 1×1 convolution. Registering a layer under a name lets
``build_multiscale_flow``, ``GlowStep``, ``replace_mixing`` and the command line build models
with it:

    register_mixing("mine", MyLayer)   # MyLayer(num_channels, **kwargs) -> normflows Flow
    layer = build_mixing("mine", 12)

Built in: "1x1" (normflows' plain ``Invertible1x1Conv``), "plu" (its LU form, Glow's default),
"qr", "emerging", "periodic" (Hoogeboom et al. 2019) and "maf" (the paper's MAF baseline).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import normflows as nf

from .flows import (
    Chain,
    EmergingConv2d,
    MaskedAffineAutoregressiveConv2d,
    PeriodicConv2d,
    QR1x1,
)
from .flows.arguments import check_positive_int
from .flows.utils import plu_1x1_conv

MixingFactory = Callable[..., nf.flows.Flow]
Factory = TypeVar("Factory", bound=MixingFactory)

_MIXING: dict[str, MixingFactory] = {}


def _check_name(name: Any) -> None:
    """Raise unless ``name`` can name a mixing layer (also a command-line choice)."""
    if not isinstance(name, str):
        raise TypeError(f"mixing layer name must be a str, got {type(name).__name__}")
    if not name or not name.isprintable() or any(c.isspace() for c in name):
        raise ValueError(f"mixing layer name must be non-empty without whitespace, got {name!r}")
    if name in _MIXING:
        raise ValueError(f"mixing layer {name!r} is already registered")


def register_mixing(name: str, factory: Factory | None = None):
    """Register a mixing layer under a name.

    Call it directly, ``register_mixing("mine", MyLayer)``, or use it as a decorator,
    ``@register_mixing("mine")``, above a class or function. The name is checked at once (also in
    the decorator form); what the factory returns is checked each time a layer is built, by
    ``build_mixing`` (calling the factory here to probe it would draw random numbers and so change
    the initialisation of models built afterwards).

    Args:
      name: name to use in ``build_mixing``, ``build_multiscale_flow``, ``GlowStep`` and
        ``replace_mixing``: a non-empty string without whitespace
      factory: callable ``factory(num_channels, **kwargs)`` returning a ``normflows.flows.Flow``
        on images of shape (batch, num_channels, height, width); omit it to get a decorator.
        ``replace_mixing`` can later swap the layer out again if it has a ``num_channels``
        attribute, as all of this package's layers do

    Returns:
      ``factory``, or without it a decorator that registers its argument and returns it

    Raises:
      TypeError: if ``name`` is not a string, ``factory`` is not callable, or ``factory`` is a
        class that is not a ``normflows.flows.Flow``
      ValueError: if ``name`` is empty, contains whitespace or is already registered
    """
    _check_name(name)
    if factory is None:
        return lambda factory: register_mixing(name, factory)
    if not callable(factory):
        raise TypeError(f"mixing layer factory must be callable, got {type(factory).__name__}")
    if isinstance(factory, type) and not issubclass(factory, nf.flows.Flow):
        raise TypeError(
            f"mixing layer class must be a subclass of normflows.flows.Flow, got {factory.__name__}"
        )
    _MIXING[name] = factory
    return factory


def mixing_layers() -> list:
    """Names of the registered mixing layers.

    Returns:
      list of str, in registration order
    """
    return list(_MIXING)


def build_mixing(name: str, num_channels: int, **kwargs: Any) -> nf.flows.Flow:
    """Build a registered mixing layer.

    Args:
      name: registered name, one of ``mixing_layers()``
      num_channels: number of channels of the images the layer acts on
      **kwargs: passed to the layer's factory

    Returns:
      ``normflows.flows.Flow`` on tensors of shape (batch, num_channels, height, width)

    Raises:
      ValueError: if ``name`` is not registered or ``num_channels`` is not a positive int
      TypeError: if the factory takes no argument of a name in ``kwargs`` (the message names the
        mixing layer and the arguments it takes), or returns something other than a
        ``normflows.flows.Flow``
    """
    if name not in _MIXING:
        raise ValueError(f"unknown mixing layer {name!r}; known: {', '.join(_MIXING)}")
    _check_arguments(name, kwargs)
    layer = _MIXING[name](check_positive_int("num_channels", num_channels), **kwargs)
    if not isinstance(layer, nf.flows.Flow):
        raise TypeError(
            f"mixing layer {name!r} must build a normflows.flows.Flow, its factory returned "
            f"{type(layer).__name__}"
        )
    return layer


def _check_arguments(name: str, kwargs: dict) -> None:
    """Raise a TypeError naming the mixing layer and its arguments when its factory takes no
    keyword argument of a name in ``kwargs`` (the factory's own error would name a function the
    user never called, e.g. ``plain_1x1_conv() got an unexpected keyword argument``)."""
    try:
        parameters = list(inspect.signature(_MIXING[name]).parameters.values())[1:]
    except (TypeError, ValueError):  # no signature to read (some builtins): the call will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    takes = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [key for key in kwargs if key not in takes]
    if unknown:
        raise TypeError(
            f"mixing layer {name!r} takes no argument {', '.join(map(repr, unknown))}; "
            f"its arguments: {', '.join(takes) if takes else 'none'}"
        )


class MAFMixing(Chain):
    """The MAF baseline of Emerging Convolutions, [arXiv:1901.11137](https://arxiv.org/abs/1901.11137)

    As in the paper's appendix, the 1×1 convolution (PLU) is followed by two
    ``MaskedAffineAutoregressiveConv2d`` layers running in opposite orders; ``inverse`` (density)
    applies them in that order.
    """

    def __init__(self, num_channels: int, maf_hidden_channels: int = 96):
        """Constructor

        Args:
          num_channels: number of channels C of the (batch, C, height, width) input
          maf_hidden_channels: hidden channels of the autoregressive layers' networks (named
            apart from the coupling's ``hidden_channels`` of ``build_multiscale_flow`` and
            ``GlowStep``)

        Raises:
          ValueError: unless both channel counts are positive ints
        """
        num_channels = check_positive_int("num_channels", num_channels)
        maf_hidden_channels = check_positive_int("maf_hidden_channels", maf_hidden_channels)
        super().__init__(
            [
                plu_1x1_conv(num_channels),
                MaskedAffineAutoregressiveConv2d(num_channels, maf_hidden_channels, reverse=False),
                MaskedAffineAutoregressiveConv2d(num_channels, maf_hidden_channels, reverse=True),
            ]
        )
        self.num_channels = num_channels


def plain_1x1_conv(num_channels: int) -> nf.flows.Invertible1x1Conv:
    """Glow's 1×1 convolution with an unconstrained weight (normflows, ``use_lu=False``)."""
    return nf.flows.Invertible1x1Conv(num_channels, use_lu=False)


register_mixing("1x1", plain_1x1_conv)
register_mixing("plu", plu_1x1_conv)
register_mixing("qr", QR1x1)
register_mixing("emerging", EmergingConv2d)
register_mixing("periodic", PeriodicConv2d)
register_mixing("maf", MAFMixing)
