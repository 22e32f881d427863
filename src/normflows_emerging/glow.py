"""A Glow step with any registered mixing layer, and mixing swaps in existing normflows models.

step = GlowStep(12, hidden_channels=64, mixing="emerging", kernel_size=5)
replace_mixing(normflows_glow_model, "qr")   # every GlowBlock / GlowStep, in place
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import normflows as nf
import torch
from torch import nn

from .flows.actnorm import ActNorm
from .flows.arguments import check_bool, check_positive_int
from .flows.utils import check_image
from .mixing import build_mixing

SPLIT_MODES = ("channel", "channel_inv", "checkerboard", "checkerboard_inv")
SCALE_MAPS = ("exp", "sigmoid", "sigmoid_inv")


def glow_coupling(
    channels: int,
    hidden_channels: int,
    scale: bool = True,
    scale_map: str = "sigmoid",
    split_mode: str = "channel",
    leaky: float = 0.0,
    init_zeros: bool = True,
    net_actnorm: bool = False,
) -> nf.flows.AffineCouplingBlock:
    """Glow's affine coupling: split, 3×3–1×1–3×3 ``ConvNet2d`` on one half, merge.

    The coupling of ``normflows.flows.GlowBlock`` (same sizes, same parameter names), built on
    its own so that a step can hold any mixing layer. The arguments are GlowBlock's.

    Args:
      channels: number of channels C of the (batch, C, height, width) input
      hidden_channels: channels of the network's two hidden layers
      scale: whether the coupling scales (else it only shifts)
      scale_map: one of ``SCALE_MAPS``: "sigmoid" (Glow), "exp" (RealNVP), "sigmoid_inv"
      split_mode: one of ``SPLIT_MODES``, see ``normflows.flows.Split``
      leaky: slope of the network's LeakyReLUs
      init_zeros: whether the network's last layer starts at zero (the coupling at identity)
      net_actnorm: whether the network uses ActNorm

    Returns:
      ``normflows.flows.AffineCouplingBlock``

    Raises:
      ValueError: if a size is not a positive int, ``scale_map`` or ``split_mode`` is unknown,
        or a channel split gets a single channel (one half would be empty)
      TypeError: if ``scale``, ``init_zeros`` or ``net_actnorm`` is not a bool
    """
    channels = check_positive_int("channels", channels)
    hidden_channels = check_positive_int("hidden_channels", hidden_channels)
    scale = check_bool("scale", scale)
    init_zeros = check_bool("init_zeros", init_zeros)
    net_actnorm = check_bool("net_actnorm", net_actnorm)
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {split_mode!r}")
    if scale_map not in SCALE_MAPS:
        raise ValueError(f"scale_map must be one of {SCALE_MAPS}, got {scale_map!r}")
    if split_mode == "channel":
        in_channels, out_channels = (channels + 1) // 2, channels // 2
    elif split_mode == "channel_inv":
        in_channels, out_channels = channels // 2, (channels + 1) // 2
    else:  # checkerboard: the network sees all channels, half of the pixels masked
        in_channels, out_channels = channels, channels
    if in_channels == 0 or out_channels == 0:
        raise ValueError(f"split_mode {split_mode!r} needs at least 2 channels, got {channels}")
    num_params = 2 if scale else 1
    net = nf.nets.ConvNet2d(
        (in_channels, hidden_channels, hidden_channels, num_params * out_channels),
        (3, 1, 3),
        leaky,
        init_zeros,
        actnorm=net_actnorm,
    )
    for module in net.modules():  # the network's ActNorms initialise safely too
        if isinstance(module, nf.utils.ActNorm):
            module.actNorm = ActNorm(module.actNorm.s.shape[1:])
    return nf.flows.AffineCouplingBlock(net, scale, scale_map, split_mode)


class GlowStep(nf.flows.Flow):
    """Glow step, [arXiv:1807.03039](https://arxiv.org/abs/1807.03039), with any mixing layer.

    Density direction (``inverse``): ActNorm → mixing → affine coupling (``glow_coupling``);
    ``forward`` (sampling) undoes it in reverse order. ``flows`` holds [coupling, mixing,
    ActNorm] in sampling order, as in ``normflows.flows.GlowBlock``, so ``mixing="plu"`` is a
    GlowBlock (``use_lu=True``) parameter for parameter, built from the same random draws.
    Unlike GlowBlock it keeps its mixing layer for a single channel too.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        mixing: str = "emerging",
        scale: bool = True,
        scale_map: str = "sigmoid",
        split_mode: str = "channel",
        leaky: float = 0.0,
        init_zeros: bool = True,
        net_actnorm: bool = False,
        **mixing_kwargs: Any,
    ):
        """Constructor

        Args:
          channels: number of channels C of the (batch, C, height, width) data
          hidden_channels: number of channels in the hidden layers of the coupling network
          mixing: name of a registered mixing layer, see ``mixing_layers()``
          scale: whether the affine coupling scales (else it only shifts)
          scale_map: map applied to the coupling's scale, "sigmoid" (Glow) or "exp" (RealNVP)
          split_mode: how the coupling splits its input, see ``normflows.flows.Split``
          leaky: slope of the coupling network's LeakyReLUs
          init_zeros: whether the coupling network's last layer starts at zero
          net_actnorm: whether the coupling network uses ActNorm
          **mixing_kwargs: passed to the mixing layer's factory

        Raises:
          ValueError: see ``glow_coupling``; or if ``mixing`` is not registered
          TypeError: if the mixing layer's factory does not return a ``normflows.flows.Flow``
        """
        super().__init__()
        channels = check_positive_int("channels", channels)
        coupling = glow_coupling(
            channels, hidden_channels, scale, scale_map, split_mode, leaky, init_zeros, net_actnorm
        )
        layer = build_mixing(mixing, channels, **mixing_kwargs)
        self.channels = channels
        self.flows = nn.ModuleList([coupling, layer, ActNorm((channels, 1, 1))])

    @property
    def min_image_size(self) -> int:
        """Smallest image height and width the step takes: its mixing layer's
        ``min_image_size`` where it has one (``PeriodicConv2d``: its kernel size), else 1."""
        return getattr(self.flows[1], "min_image_size", 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def _check_input(self, x: torch.Tensor) -> None:
        """Before any sub-layer runs: no sub-layer (the ActNorm's initialisation above all) may
        see an input that another one then refuses."""
        actnorm = self.flows[-1]
        check_image(x, self.channels, type(self).__name__, actnorm.s)
        if not actnorm.initialised:
            if x.shape[0] == 0:
                raise ValueError(
                    f"{type(self).__name__}: the first batch initialises its ActNorm and must not "
                    f"be empty"
                )
            if not torch.isfinite(x).all():
                raise ValueError(
                    f"{type(self).__name__}: the first batch initialises its ActNorm and must be "
                    f"finite, got inf or NaN values"
                )

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction.

        Args:
          z: tensor of shape (batch, channels, height, width)
          context: ignored (normflows' signature; the step is not conditional)

        Returns:
          x and log|det dx/dz| of shape (batch,)

        Raises:
          TypeError, ValueError: see :meth:`inverse`
        """
        self._check_input(z)
        log_det = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, part = flow(z)
            log_det = log_det + part
        return z, log_det

    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction.

        Args:
          x: tensor of shape (batch, channels, height, width)
          context: ignored (normflows' signature; the step is not conditional)

        Returns:
          z and log|det dz/dx| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype (float32/float64,
            the step's) or device; while the ActNorm is not initialised yet, also for an empty
            batch or inf/NaN values (its data-dependent initialisation would keep them for good)
        """
        self._check_input(x)
        log_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flows):
            x, part = flow.inverse(x)
            log_det = log_det + part
        return x, log_det


def _mixing_channels(block: nn.Module) -> int:
    """Channel count of a GlowStep's or GlowBlock's mixing layer.

    A GlowBlock is [coupling, 1×1 convolution, ActNorm]; it drops the 1×1 convolution only for a
    single channel (its documented rule). Otherwise the layer in the middle says its channel count
    as ``num_channels`` (normflows' ``Invertible1x1Conv`` and this package's layers do).
    """
    if isinstance(block, GlowStep):
        return block.channels
    flows = list(block.flows)
    layout_ok = (
        len(flows) in (2, 3)
        and isinstance(flows[0], nf.flows.AffineCouplingBlock)
        and isinstance(flows[-1], nf.flows.ActNorm)
    )
    if not layout_ok:
        names = [type(flow).__name__ for flow in flows]
        raise ValueError(
            f"replace_mixing expects a GlowBlock of [AffineCouplingBlock, mixing layer, ActNorm], "
            f"got {names}"
        )
    if len(flows) == 2:
        return 1
    channels = getattr(flows[1], "num_channels", None)
    if isinstance(channels, bool) or not isinstance(channels, Integral):
        raise TypeError(
            f"replace_mixing cannot tell the channel count of the mixing layer "
            f"{type(flows[1]).__name__}: it has no int attribute num_channels"
        )
    return int(channels)


def replace_mixing(model: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """Swap the mixing layer (1×1 convolution) of every GlowBlock and GlowStep in a model.

    In place. The new layers take the device and dtype of their block's parameters and start
    from their own initialisation; the other parameters are kept. A single-channel GlowBlock
    (which has no mixing layer) gets one. A GlowBlock's ``normflows.flows.ActNorm`` becomes this
    package's :class:`~normflows_emerging.flows.actnorm.ActNorm` with the same state (safe on a
    degenerate first batch, no device read per call). All new layers are built before any is
    put in, so an error leaves the model as it was.

    Args:
      model: ``torch.nn.Module`` containing ``normflows.flows.GlowBlock`` or ``GlowStep`` modules
      name: registered mixing layer name, see ``mixing_layers()``
      **kwargs: passed to the mixing layer's factory

    Returns:
      ``model``

    Raises:
      TypeError: if ``model`` is not a ``torch.nn.Module``, the factory returns no Flow, or a
        GlowBlock's current mixing layer has no int ``num_channels``
      ValueError: if ``model`` contains no GlowBlock or GlowStep, ``name`` is not registered, a
        GlowBlock is not laid out as [coupling, mixing layer, ActNorm], or a block's images are
        smaller than the new layer's ``min_image_size`` (a periodic layer's kernel). The image
        sizes are traced from the base distributions' shapes of a normflows ``NormalizingFlow``
        or ``MultiscaleFlow`` (``ImageMultiscaleFlow`` included) through ``Squeeze`` and
        ``Merge``; blocks in other models are not checked
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_mixing expects a torch.nn.Module, got {type(model).__name__}")
    blocks = [m for m in model.modules() if isinstance(m, (nf.flows.GlowBlock, GlowStep))]
    if not blocks:
        raise ValueError("replace_mixing expects a model with GlowBlocks or GlowSteps; found none")
    layers = []
    for block in blocks:
        like = next(block.parameters())
        layer = build_mixing(name, _mixing_channels(block), **kwargs)
        layers.append(layer.to(device=like.device, dtype=like.dtype))
    _check_image_sizes(model, blocks, layers)
    for block, layer in zip(blocks, layers):
        if type(block.flows[-1]) is nf.flows.ActNorm:
            block.flows[-1] = _safe_actnorm(block.flows[-1])
        if len(block.flows) == 3:
            block.flows[1] = layer
        else:
            block.flows.insert(1, layer)
    return model


def _safe_actnorm(old: nf.flows.ActNorm) -> ActNorm:
    """This package's ActNorm with the state (initialised or not) of normflows' ``old``."""
    new = ActNorm(old.s.shape[1:]).to(device=old.s.device, dtype=old.s.dtype)
    new.load_state_dict(old.state_dict())
    return new


def _check_image_sizes(model: nn.Module, blocks: list, layers: list) -> None:
    """Raise ValueError if a new layer would see images smaller than its ``min_image_size``, as
    ``build_glow`` refuses them (else the model fails only at its first ``log_prob`` or
    ``sample``). The image size each block sees is traced by :func:`_image_sizes`; a block it
    cannot place is not checked."""
    from .multiscale import _min_image_size

    sizes = _image_sizes(model)
    for block, layer in zip(blocks, layers):
        if id(block) not in sizes:
            continue
        where, height, width = sizes[id(block)]
        needed = _min_image_size(layer)
        if min(height, width) < needed:
            raise ValueError(
                f"{where} see {height}x{width} images, but {type(layer).__name__} needs at least "
                f"{needed}x{needed} (its min_image_size): the model is left as it was"
            )


def _image_sizes(model: nn.Module) -> dict[int, tuple[str, int, int]]:
    """{id(block): (which blocks, height, width)} of the images the GlowBlocks and GlowSteps of
    a normflows model see.

    Traced in the sampling direction from the shapes of the base distributions (``shape`` of
    normflows' ``DiagGaussian``, ``GlowBase``, ``ClassCondDiagGaussian``, ...): a
    ``NormalizingFlow`` through its flows, a ``MultiscaleFlow`` level by level through its
    ``Merge``\\ s (deepest level first, as normflows samples). ``Squeeze`` halves the channels
    and doubles the sides; blocks, ActNorms, 1x1 convolutions, couplings and this package's
    layers keep the shape. After any other flow the shape is unknown and the blocks there are
    left out, as are blocks in other models.
    """
    sizes: dict[int, tuple[str, int, int]] = {}
    if isinstance(model, nf.MultiscaleFlow):
        levels = len(model.q0)
        shape = None
        for i, (base, flows) in enumerate(zip(model.q0, model.flows)):
            latent = _base_shape(base)
            shape = latent if i == 0 else _merged(model.merges[i - 1], shape, latent)
            where = f"the steps of level {levels - i} (of {levels})"
            shape = _trace(flows, shape, where, sizes)
    elif isinstance(model, nf.NormalizingFlow):
        _trace(model.flows, _base_shape(model.q0), "the steps of the model", sizes)
    return sizes


def _trace(flows, shape, where, sizes):
    """Record the (height, width) each block of ``flows`` sees, starting from ``shape``
    (channels, height, width); return the shape after them (None: unknown)."""
    for flow in flows:
        if shape is None:
            return None
        channels, height, width = shape
        if isinstance(flow, (nf.flows.GlowBlock, GlowStep)):
            sizes[id(flow)] = (where, height, width)
        elif isinstance(flow, nf.flows.Squeeze):
            shape = (channels // 4, 2 * height, 2 * width) if channels % 4 == 0 else None
        elif not (
            isinstance(flow, _SHAPE_KEEPING_FLOWS)
            or type(flow).__module__.startswith(f"{__package__}.flows.")
        ):
            shape = None
    return shape


# normflows flows whose output has their input's shape
_SHAPE_KEEPING_FLOWS = (
    nf.flows.ActNorm,
    nf.flows.Invertible1x1Conv,
    nf.flows.AffineCouplingBlock,
)


def _base_shape(base: nn.Module) -> tuple[int, int, int] | None:
    """The (channels, height, width) a base distribution samples, if it says (else None)."""
    shape = getattr(base, "shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3:
        if all(isinstance(n, Integral) and not isinstance(n, bool) and n > 0 for n in shape):
            return tuple(int(n) for n in shape)
    return None


def _merged(merge: nn.Module, shape, latent):
    """The shape after normflows' ``Merge`` of a level's input and its latent (None: unknown)."""
    if shape is None or latent is None or not isinstance(merge, nf.flows.Merge):
        return None
    if merge.mode in ("channel", "channel_inv") and shape[1:] == latent[1:]:
        return (shape[0] + latent[0], *shape[1:])
    if "checkerboard" in merge.mode and shape == latent:
        return (shape[0], shape[1], 2 * shape[2])
    return None
