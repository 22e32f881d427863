"""Mixing-layer registry and a multiscale (Glow-style) model builder for normflows.

A *mixing layer* is the invertible channel-mixing layer of a Glow step, the 1×1 convolution in
Glow. Layers are registered by name, so models can be built with any of them and existing
normflows Glow models can swap their 1×1 convolutions for another layer:

    model = build_multiscale_flow((3, 32, 32), levels=3, flows_per_level=8,
                                  hidden_channels=256, mixing="emerging")
    replace_mixing(glow_model, "qr")
"""

import math

import normflows as nf
import torch

from .flows.composite import Chain
from .flows.emerging import EmergingConv2d
from .flows.maf import MaskedAffineAutoregressiveConv2d
from .flows.periodic_conv import PeriodicConv2d
from .flows.qr import QR1x1
from .flows.utils import plu_1x1_conv

_MIXING = {}


def register_mixing(name, factory=None):
    """Register a mixing layer under a name.

    Call it directly, ``register_mixing("mine", MyLayer)``, or use it as a decorator,
    ``@register_mixing("mine")``, above a class or function.

    Args:
      name: name to use in ``build_mixing``, ``build_multiscale_flow``, ``GlowStep`` and
        ``replace_mixing``
      factory: callable ``factory(num_channels, **kwargs)`` returning a ``normflows.flows.Flow``
        on images of shape (batch, num_channels, height, width); omit it to get a decorator

    Returns:
      ``factory``, or without it a decorator that registers its argument and returns it

    Raises:
      TypeError: if ``name`` is not a string or ``factory`` is not callable
      ValueError: if ``name`` is already registered
    """
    if not isinstance(name, str):
        raise TypeError(f"mixing layer name must be a str, got {type(name).__name__}")
    if factory is None:
        return lambda factory: register_mixing(name, factory)
    if not callable(factory):
        raise TypeError(f"mixing layer factory must be callable, got {type(factory).__name__}")
    if name in _MIXING:
        raise ValueError(f"mixing layer {name!r} is already registered")
    _MIXING[name] = factory
    return factory


def mixing_layers():
    """Names of the registered mixing layers.

    Returns:
      list of str, in registration order
    """
    return list(_MIXING)


def build_mixing(name, num_channels, **kwargs):
    """Build a registered mixing layer.

    Args:
      name: registered name, one of ``mixing_layers()``
      num_channels: number of channels of the images the layer acts on
      **kwargs: passed to the layer's factory

    Returns:
      ``normflows.flows.Flow`` on tensors of shape (batch, num_channels, height, width)

    Raises:
      ValueError: if ``name`` is not registered
    """
    if name not in _MIXING:
        raise ValueError(f"unknown mixing layer {name!r}; known: {', '.join(_MIXING)}")
    return _MIXING[name](num_channels, **kwargs)


register_mixing("1x1", lambda num_channels: nf.flows.Invertible1x1Conv(num_channels, use_lu=False))
register_mixing("plu", plu_1x1_conv)
register_mixing("qr", QR1x1)
register_mixing("emerging", EmergingConv2d)
register_mixing("periodic", PeriodicConv2d)


@register_mixing("maf")
def _maf_mixing(num_channels, maf_hidden_channels=96):
    """The paper's MAF baseline: PLU 1×1 convolution, then two masked autoregressive layers.

    The two autoregressive layers run in opposite orders.

    Args:
      num_channels: number of channels
      maf_hidden_channels: hidden channels of the autoregressive layers' networks (named apart
        from the coupling's ``hidden_channels`` of ``build_multiscale_flow`` and ``GlowStep``)

    Returns:
      ``Chain`` of the three layers, in density order
    """
    return Chain(
        [
            plu_1x1_conv(num_channels),
            MaskedAffineAutoregressiveConv2d(num_channels, maf_hidden_channels, reverse=False),
            MaskedAffineAutoregressiveConv2d(num_channels, maf_hidden_channels, reverse=True),
        ]
    )


def _set_mixing(block, layer):
    """Put ``layer`` in a GlowBlock, between its affine coupling and its ActNorm.

    ``block.flows`` is [coupling, mixing, ActNorm] in sampling order; a single-channel
    ``GlowBlock`` has no mixing layer, so there it is inserted.
    """
    if len(block.flows) == 3:
        block.flows[1] = layer
    else:
        block.flows.insert(1, layer)


class GlowStep(nf.flows.GlowBlock):
    """A Glow step whose mixing layer is any registered one.

    Density direction (``inverse``): ActNorm → mixing → affine coupling with the
    3×3–1×1–3×3 convolutional network; ``forward`` (sampling) undoes it in reverse order.
    Same layout and arguments as ``normflows.flows.GlowBlock``, with ``mixing`` in place of
    ``use_lu``: ``mixing="plu"`` is a GlowBlock with ``use_lu=True``.
    """

    def __init__(
        self,
        channels,
        hidden_channels,
        mixing="emerging",
        scale=True,
        scale_map="sigmoid",
        split_mode="channel",
        leaky=0.0,
        init_zeros=True,
        net_actnorm=False,
        **mixing_kwargs,
    ):
        """Constructor

        Args:
          channels: number of channels of the data
          hidden_channels: number of channels in the hidden layers of the coupling network
          mixing: name of a registered mixing layer, see ``mixing_layers()``
          scale: whether the affine coupling scales (else it only shifts)
          scale_map: map applied to the coupling's scale, "sigmoid" (Glow) or "exp" (RealNVP)
          split_mode: how the coupling splits its input, see ``normflows.flows.Split``
          leaky: slope of the coupling network's LeakyReLUs
          init_zeros: whether the coupling network's last layer starts at zero
          net_actnorm: whether the coupling network uses ActNorm
          **mixing_kwargs: passed to the mixing layer's factory
        """
        layer = build_mixing(mixing, channels, **mixing_kwargs)
        # GlowBlock builds its own 1×1 convolution, replaced by ``layer`` below; the plain one
        # (use_lu=False) is the cheapest to build.
        super().__init__(
            channels,
            hidden_channels,
            scale=scale,
            scale_map=scale_map,
            split_mode=split_mode,
            leaky=leaky,
            init_zeros=init_zeros,
            use_lu=False,
            net_actnorm=net_actnorm,
        )
        _set_mixing(self, layer)


def replace_mixing(model, name, **kwargs):
    """Swap the mixing layer (1×1 convolution) of every GlowBlock in a model, in place.

    Also applies to ``GlowStep``. The new layers take the device and dtype of their block and
    start from their own initialisation; the other parameters are kept.

    Args:
      model: ``torch.nn.Module`` containing ``normflows.flows.GlowBlock`` modules
      name: registered mixing layer name, see ``mixing_layers()``
      **kwargs: passed to the mixing layer's factory

    Returns:
      ``model``

    Raises:
      TypeError: if ``model`` is not a ``torch.nn.Module``
      ValueError: if ``model`` contains no GlowBlock or ``name`` is not registered
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"replace_mixing expects a torch.nn.Module, got {type(model).__name__}")
    blocks = [module for module in model.modules() if isinstance(module, nf.flows.GlowBlock)]
    if not blocks:
        raise ValueError("replace_mixing expects a model with normflows GlowBlocks; found none")
    for block in blocks:
        actnorm_shift = block.flows[-1].t  # shape (1, channels, 1, 1)
        layer = build_mixing(name, actnorm_shift.shape[1], **kwargs)
        _set_mixing(block, layer.to(actnorm_shift))
    return model


def build_multiscale_flow(
    input_shape,
    levels,
    flows_per_level,
    hidden_channels,
    mixing="emerging",
    num_classes=None,
    split_mode="channel",
    scale=True,
    **mixing_kwargs,
):
    """Multiscale Glow-style model, laid out like normflows' Glow example.

    Density direction, for each of the ``levels`` levels: squeeze (channels ×4, sides ÷2), then
    ``flows_per_level`` ``GlowStep``s, then (except at the last level) split off half of the
    channels as a latent. Each latent has its own base distribution: ``GlowBase``, or
    ``ClassCondDiagGaussian`` when ``num_classes`` is given. In the returned model level 0 is
    the deepest one (normflows' order).

    Args:
      input_shape: (channels, height, width) of the data; height and width divisible by
        2**levels
      levels: number of levels, at least 1
      flows_per_level: number of GlowSteps per level, at least 1
      hidden_channels: hidden channels of the coupling networks
      mixing: name of a registered mixing layer, see ``mixing_layers()``
      num_classes: number of classes for a class-conditional model, or None
      split_mode: how the couplings split their input, see ``normflows.flows.Split``
      scale: whether the couplings scale (else they only shift)
      **mixing_kwargs: passed to the mixing layer's factory

    Returns:
      ``normflows.MultiscaleFlow``; its ``log_prob(x, y)`` and ``sample(num_samples, y)`` take
      class labels ``y`` of shape (batch,) (None if not class-conditional)

    Raises:
      ValueError: if the shape, the counts or ``mixing`` are invalid
    """
    channels, height, width = _check_sizes(input_shape, levels, flows_per_level, hidden_channels)
    q0, flows, merges = [], [], []
    for i in range(levels):
        steps = [
            GlowStep(
                channels * 2 ** (levels + 1 - i),
                hidden_channels,
                mixing,
                scale=scale,
                split_mode=split_mode,
                **mixing_kwargs,
            )
            for _ in range(flows_per_level)
        ]
        flows.append(steps + [nf.flows.Squeeze()])
        factor = 2 ** (levels - i)
        if i == 0:
            latent_shape = (channels * 2 * factor, height // factor, width // factor)
        else:
            merges.append(nf.flows.Merge())
            latent_shape = (channels * factor, height // factor, width // factor)
        if num_classes is None:
            q0.append(nf.distributions.GlowBase(latent_shape))
        else:
            q0.append(nf.distributions.ClassCondDiagGaussian(latent_shape, num_classes))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=num_classes is not None)


def _check_sizes(input_shape, levels, flows_per_level, hidden_channels):
    """Check the sizes given to ``build_multiscale_flow``; return input_shape as a tuple."""
    counts = dict(levels=levels, flows_per_level=flows_per_level, hidden_channels=hidden_channels)
    for label, count in counts.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{label} must be a positive int, got {count!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}"
        )
    if shape[1] % 2**levels or shape[2] % 2**levels:
        raise ValueError(
            f"height and width of input_shape {shape} must be divisible by 2**levels = {2**levels}"
        )
    return shape


def bits_per_dim_from_nll(nll, num_dims, num_bins):
    """Bits per dimension of integer data from the NLL of its dequantised version in [0, 1).

    Args:
      nll: negative log-likelihood in nats (tensor or float)
      num_dims: dimensions per example
      num_bins: intensity levels of the integer data

    Returns:
      ``nll / (num_dims ln 2) + log2(num_bins)``
    """
    return nll / (num_dims * math.log(2)) + math.log2(num_bins)


def bits_per_dim(model, x, num_bins=256, y=None):
    """Bits per dimension of dequantised data under a model.

    For data with ``num_bins`` levels per dimension scaled and dequantised to [0, 1):
    ``-log p(x) / (D·ln 2) + log2(num_bins)``, with D the number of dimensions per example.

    Args:
      model: ``normflows.MultiscaleFlow`` or another normflows model with ``log_prob``
      x: data in [0, 1), shape (batch, ...)
      num_bins: number of discrete levels of the original data (256 for 8-bit images)
      y: class labels of shape (batch,) for class-conditional models, else None

    Returns:
      tensor of shape (batch,)

    Raises:
      ValueError: if ``x`` is outside [0, 1) or ``num_bins`` is not an int above 1
    """
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an int of at least 2, got {num_bins!r}")
    if x.min() < 0 or x.max() >= 1:
        raise ValueError("bits_per_dim expects dequantised data in [0, 1)")
    if isinstance(model, nf.MultiscaleFlow) or y is not None:
        log_p = model.log_prob(x, y)
    else:
        log_p = model.log_prob(x)
    return bits_per_dim_from_nll(-log_p, x[0].numel(), num_bins)
