"""Glow's multiscale layout, for any step, as a normflows model that checks its inputs.

model = build_multiscale_flow((3, 32, 32), levels=3, flows_per_level=8,
                              hidden_channels=256, mixing="emerging")
glow = build_glow((3, 32, 32), 3, 8, lambda c: normflows.flows.GlowBlock(c, 256))
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import normflows as nf
import torch

from .errors import NonFiniteError
from .flows.arguments import check_positive_int
from .flows.grouped import grouped_weights
from .glow import GlowStep
from .solve.checks import check_strided
from .solve.transforms import under_transform

Shape = tuple[int, int, int]


class ImageMultiscaleFlow(nf.MultiscaleFlow):
    """``normflows.MultiscaleFlow`` on images of one shape, checking what it is given.

    Its methods are MultiscaleFlow's; before any layer runs, ``log_prob``, ``forward``,
    ``forward_kld``, ``inverse_and_log_det``, ``forward_and_log_det`` and ``sample`` check the
    images and latents (shape, dtype and device those of the model's parameters, at least one
    example, all values finite), the class labels (integer indices in [0, num_classes) of any
    integer dtype, used as int64, or finite class weights, non-negative with a positive sum per
    row, on the model's device; at least one) and the sampling temperature (a finite
    number > 0), so a wrong input is reported in the model's terms and no layer (e.g. an
    ActNorm's data-dependent initialisation, which a float64, empty or NaN batch would corrupt
    for good) sees it.

    The value checks (finiteness, label range) read one value per tensor: on CUDA that is a
    synchronisation per call, accepted because a NaN batch or an out-of-range label otherwise
    corrupts the model or gives a device-side assert far from its cause. Under ``torch.compile``
    they are skipped (each would break the graph); shapes, dtypes and devices are still checked.
    ``sample`` reads one value per call (its finiteness check); the layers of this package read
    none on a GPU.
    """

    def __init__(
        self,
        q0: Sequence[nf.distributions.BaseDistribution],
        flows: Sequence[Sequence[nf.flows.Flow]],
        merges: Sequence[nf.flows.Flow],
        input_shape: Shape,
        latent_shapes: Sequence[Shape],
        num_classes: int | None = None,
    ):
        """Constructor

        Args:
          q0, flows, merges: as for ``normflows.MultiscaleFlow``, level 0 the deepest
          input_shape: (channels, height, width) of the images
          latent_shapes: (channels, height, width) of each level's latent, in the order of ``q0``
          num_classes: number of classes of a class-conditional model, or None
        """
        super().__init__(q0, flows, merges, class_cond=num_classes is not None)
        self.input_shape = tuple(input_shape)
        self.latent_shapes = [tuple(shape) for shape in latent_shapes]
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, num_classes={self.num_classes}"

    def _check_images(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"model expects images as a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"model expects images of shape (batch, {', '.join(map(str, self.input_shape))}), "
                f"got shape {tuple(x.shape)}"
            )
        self._check_values("images", x)

    def _check_values(self, what: str, x: torch.Tensor) -> None:
        """Dtype and device of the model's parameters, a non-empty batch, finite values."""
        like = next(self.parameters(), x)  # a model without parameters takes any float dtype
        check_strided(x, f"the model's {what}")
        if x.dtype != like.dtype:
            raise TypeError(
                f"model has {like.dtype} parameters but got {what} of dtype {x.dtype}; convert "
                f"them (e.g. x.to({like.dtype})) or the model"
            )
        if not x.is_floating_point():
            raise TypeError(f"model expects {what} of a floating-point dtype, got {x.dtype}")
        if x.device != like.device:
            raise ValueError(
                f"model has parameters on {like.device} but got {what} on {x.device}; move one "
                f"of them"
            )
        if x.shape[0] == 0:
            raise ValueError(f"model expects a batch of at least one example, got empty {what}")
        if _reads_values(x) and not torch.isfinite(x).all():
            raise ValueError(f"model expects finite {what}, got inf or NaN values")

    def _check_labels(self, y: Any, batch: int | None) -> torch.Tensor | None:
        """Labels: None for an unconditional model; class indices of shape (batch,) or class
        weights of shape (batch, num_classes) otherwise (``batch`` None: any length >= 1).

        Returns:
          ``y``, integer class indices converted to int64 (normflows' scatter takes only int64)
        """
        if not self.class_cond:
            if y is not None:
                raise ValueError("model is not class-conditional: y must be None")
            return None
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"class-conditional model needs labels y as a torch.Tensor, got {type(y).__name__}"
            )
        indices = (
            y.dim() == 1
            and not y.is_floating_point()
            and not y.is_complex()
            and y.dtype != torch.bool
        )
        weights = y.dim() == 2 and y.is_floating_point() and y.shape[1] == self.num_classes
        if not (indices or weights) or (batch is not None and y.shape[0] != batch):
            size = "batch" if batch is None else batch
            raise ValueError(
                f"class-conditional model expects labels y of shape ({size},) and integer dtype, "
                f"or class weights of shape ({size}, {self.num_classes}); got shape "
                f"{tuple(y.shape)}, dtype {y.dtype}"
            )
        if weights:
            self._check_values("class weights y", y)
            if _reads_values(y) and bool(  # one read of a device value
                ((y < 0).any(dim=1) | (y.sum(dim=1) <= 0)).any()
            ):
                raise ValueError(
                    "class weights y must be non-negative with a positive sum in every row"
                )
            return y
        if y.shape[0] == 0:
            raise ValueError("model expects labels y for at least one example, got empty labels")
        device = next(self.parameters(), y).device
        if y.device != device:
            raise ValueError(f"model has parameters on {device} but got labels y on {y.device}")
        if (
            _reads_values(y)
            and bool(((y < 0) | (y >= self.num_classes)).any())  # one read of a device value
        ):
            raise ValueError(
                f"class labels y must lie in [0, {self.num_classes}), got values from "
                f"{int(y.min())} to {int(y.max())}"
            )
        return y.long()

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density of images, shape (batch,); see ``normflows.MultiscaleFlow.log_prob``.

        The layers of one kind and shape compute their parameter-side work together (see
        :func:`~normflows_emerging.grouped_weights`), here and in ``forward_kld`` and
        :meth:`inverse_and_log_det`.

        Raises:
          TypeError, ValueError: if ``x`` is not a non-empty finite batch of shape
            (batch, *input_shape) with the model's dtype and device, or ``y`` does not fit the
            model (see the class docstring)
        """
        self._check_images(x)
        y = self._check_labels(y, x.shape[0])
        with self._grouped_weights():
            return super().log_prob(x, y)

    def inverse_and_log_det(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents (in ``q0``'s order) and log|det dz/dx|; see ``normflows.MultiscaleFlow``.

        Raises:
          TypeError, ValueError: if ``x`` is not a non-empty finite batch of shape
            (batch, *input_shape) with the model's dtype and device
        """
        self._check_images(x)
        with self._grouped_weights():
            return super().inverse_and_log_det(x)

    def _grouped_weights(self):
        """The layers' parameter-side work batched for this call (see
        :mod:`normflows_emerging.flows.grouped`); not under ``torch.compile`` (a context
        variable cannot be set inside a graph)."""
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return grouped_weights(self)

    def forward_and_log_det(self, z: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images from latents and log|det dx/dz|; see ``normflows.MultiscaleFlow``.

        Raises:
          ValueError: unless ``z`` holds one latent per level, of shapes
            (batch, *latent_shapes[i]) with one batch size >= 1, finite, on the model's device
          TypeError: for latents of another dtype than the model's
        """
        shapes = [tuple(latent.shape) if isinstance(latent, torch.Tensor) else None for latent in z]
        batch = shapes[0][0] if shapes and shapes[0] else None
        expected = [(batch, *shape) for shape in self.latent_shapes]
        if shapes != expected:
            raise ValueError(
                f"model expects latents of shapes {[('batch', *s) for s in self.latent_shapes]} "
                f"with one batch size, got {shapes}"
            )
        for level, latent in enumerate(z):
            self._check_values(f"latents (level {level})", latent)
        return super().forward_and_log_det(z)

    def sample(
        self,
        num_samples: int = 1,
        y: torch.Tensor | None = None,
        temperature: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their log-density; see :meth:`sample_with_labels`, which also returns the
        class labels used.

        Returns:
          images (num_samples, *input_shape) and their log-density log q, shape (num_samples,)
        """
        x, log_q, _ = self.sample_with_labels(num_samples, y, temperature)
        return x, log_q

    def sample_with_labels(
        self,
        num_samples: int = 1,
        y: torch.Tensor | None = None,
        temperature: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images, their log-density and the class labels they were drawn for.

        For a class-conditional model, ``y`` (if given) sets the classes and the number of
        samples (normflows' rule: ``num_samples`` left at 1 takes ``len(y)``); else one class per
        image is drawn uniformly. Every level's base distribution uses the image's one class
        (normflows' ``MultiscaleFlow.sample`` with ``y=None`` draws a new class at every level,
        so an image mixes classes and its log q matches none), so ``log_q`` equals
        ``log_prob(x, y)`` at temperature 1.

        ``temperature`` (None: the base distributions' own, normally 1) scales the base
        distributions' standard deviations for this call only: it travels down the call to
        shallow copies of the base distributions and is never set on the model, so calls on the
        same model in other threads keep their own temperatures. ``log_q`` is then the density
        of the tempered distribution.

        Returns:
          images (num_samples, *input_shape), log q of shape (num_samples,) and the labels: ``y``
          as given (integer class indices as int64), the drawn class indices (shape
          (num_samples,), int64, on the model's device)
          or None for a model that is not class-conditional

        Raises:
          ValueError: if ``num_samples`` is not a positive int, ``temperature`` not a finite
            number > 0, or ``y`` does not fit the model (see the class docstring) or, with
            ``num_samples`` other than 1, has another number of entries
          NonFiniteError: (a ValueError) if a sample came out NaN or infinite
          torch.linalg.LinAlgError: if a layer of this package cannot invert its convolution
        """
        check_positive_int("num_samples", num_samples)
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, Real)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                f"temperature must be a finite number > 0 or None, got {temperature!r}"
            )
        if y is not None:
            y = self._check_labels(y, None if num_samples == 1 else num_samples)
        elif self.class_cond:
            device = next(self.parameters(), torch.empty(0)).device
            y = torch.randint(self.num_classes, (num_samples,), device=device)
        x, log_q = self._sample(num_samples, y, temperature)
        return (*self._finite_samples(x, log_q, 1.0 if temperature is None else temperature), y)

    def _sample(
        self, num_samples: int, y: torch.Tensor | None, temperature: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``normflows.MultiscaleFlow.sample`` with the temperature handed to the base
        distributions of this call only (normflows sets it on the model and resets it after,
        so a concurrent call on the same model would sample at this call's temperature)."""
        log_q = 0
        for level, base in enumerate(self.q0):
            base = _at_temperature(base, temperature)
            z_, log_q_ = base(num_samples, y) if self.class_cond else base(num_samples)
            if level == 0:
                log_q, z = log_q_, z_
            else:
                log_q = log_q + log_q_
                z, log_det = self.merges[level - 1]([z, z_])
                log_q = log_q - log_det
            for flow in self.flows[level]:
                z, log_det = flow(z)
                log_q = log_q - log_det
        if self.transform is not None:
            z, log_det = self.transform(z)
            log_q = log_q - log_det
        return z, log_q

    @staticmethod
    def _finite_samples(
        x: torch.Tensor, log_p: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log_p)`` unless a sample is NaN or infinite.

        The latents are finite draws, so a non-finite image means a flow's sampling direction
        overflowed: the layers of this package raise then, but other flows (normflows' affine
        couplings, ActNorm) return inf or NaN.
        """
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise NonFiniteError(
                f"{bad} of the {x.numel()} sampled values are NaN or infinite at temperature "
                f"{temperature}: a flow's sampling direction overflowed, so no samples are "
                f"returned (a lower temperature may help; a model with non-finite or extreme "
                f"parameters cannot sample)"
            )
        return x, log_p


def _at_temperature(
    base: nf.distributions.BaseDistribution, temperature: float | None
) -> nf.distributions.BaseDistribution:
    """``base``, or for a temperature a shallow copy of it with that ``temperature`` attribute
    (normflows' base distributions read it when sampling): the copy shares the parameters, so
    gradients and ``torch.func.functional_call`` reach the model's own.

    Raises:
      NotImplementedError: if ``base`` has no ``temperature`` attribute (as normflows does)
    """
    if temperature is None:
        return base
    if not hasattr(base, "temperature"):
        raise NotImplementedError(
            f"the base distribution {type(base).__name__} does not support temperature "
            f"annealed sampling (it has no temperature attribute)"
        )
    tempered = copy.copy(base)
    tempered.temperature = float(temperature)
    return tempered


def _min_image_size(step: nf.flows.Flow) -> int:
    """The ``min_image_size`` of a step: 1 where it has none (or None), else a positive int.

    Raises:
      TypeError: if the attribute is neither None nor an int (bools refused, numpy ints
        accepted): compared with the image size it would fail obscurely or, as NaN, pass silently
      ValueError: if it is an int below 1
    """
    needed = getattr(step, "min_image_size", None)
    if needed is None:
        return 1
    if isinstance(needed, bool) or not isinstance(needed, Integral):
        raise TypeError(
            f"{type(step).__name__}.min_image_size must be a positive int or None, got {needed!r}"
        )
    if needed < 1:
        raise ValueError(
            f"{type(step).__name__}.min_image_size must be a positive int or None, got {needed!r}"
        )
    return int(needed)


def build_glow(
    input_shape: Sequence[int],
    levels: int,
    flows_per_level: int,
    make_step: Callable[[int], nf.flows.Flow],
    num_classes: int | None = None,
) -> ImageMultiscaleFlow:
    """Glow's multiscale layout (as in normflows' Glow example) around any step.

    Density direction, for each of the ``levels`` levels: squeeze (channels ×4, sides ÷2), then
    ``flows_per_level`` steps, then (except at the last level) split off half of the channels as
    a latent. Each latent has its own base distribution: ``GlowBase``, or
    ``ClassCondDiagGaussian`` when ``num_classes`` is given. In the returned model level 0 is
    the deepest one (normflows' order). For input (C, H, W) and L levels the latent of level i
    has shape (C·2^(L-i), H/2^(L-i), W/2^(L-i)), doubled in channels for level 0.

    Args:
      input_shape: (channels, height, width) of the data; height and width divisible by
        2**levels
      levels: number of levels, at least 1
      flows_per_level: number of steps per level, at least 1
      make_step: ``make_step(channels)`` returns one step, a ``normflows.flows.Flow`` on
        (batch, channels, height, width); called once per step, deepest level first
      num_classes: number of classes for a class-conditional model, or None

    Returns:
      ``ImageMultiscaleFlow``; its ``log_prob(x, y)`` and ``sample(num_samples, y)`` take class
      labels ``y`` of shape (batch,) (None if not class-conditional)

    Raises:
      ValueError: if the shape or the counts are invalid, or a level's images are smaller than
        its steps' ``min_image_size`` (where a step has one, as ``GlowStep`` does), or that
        attribute is an int below 1
      TypeError: if ``make_step`` is not callable or returns something other than a Flow, or a
        step's ``min_image_size`` is neither None nor an int
    """
    levels = check_positive_int("levels", levels)
    channels, height, width = _check_shape(input_shape, levels)
    flows_per_level = check_positive_int("flows_per_level", flows_per_level)
    if num_classes is not None:
        num_classes = check_positive_int("num_classes", num_classes)
    if not callable(make_step):
        raise TypeError(f"make_step must be callable, got {type(make_step).__name__}")
    q0, flows, merges, latent_shapes = [], [], [], []
    for i in range(levels):
        step_channels = channels * 2 ** (levels + 1 - i)
        steps = [make_step(step_channels) for _ in range(flows_per_level)]
        factor = 2 ** (levels - i)
        for step in steps:
            if not isinstance(step, nf.flows.Flow):
                raise TypeError(
                    f"make_step must return a normflows.flows.Flow, got {type(step).__name__}"
                )
            needed = _min_image_size(step)
            if min(height, width) // factor < needed:
                raise ValueError(
                    f"the steps of level {levels - i} (of {levels}) see {height // factor}x"
                    f"{width // factor} images, but {type(step).__name__} needs at least "
                    f"{needed}x{needed} (its min_image_size, e.g. a periodic mixing layer's "
                    f"kernel): use fewer levels or larger images"
                )
        flows.append(steps + [nf.flows.Squeeze()])
        latent_shape = (channels * factor * (2 if i == 0 else 1), height // factor, width // factor)
        if i > 0:
            merges.append(nf.flows.Merge())
        if num_classes is None:
            q0.append(nf.distributions.GlowBase(latent_shape))
        else:
            q0.append(nf.distributions.ClassCondDiagGaussian(latent_shape, num_classes))
        latent_shapes.append(latent_shape)
    return ImageMultiscaleFlow(
        q0, flows, merges, (channels, height, width), latent_shapes, num_classes
    )


def build_multiscale_flow(
    input_shape: Sequence[int],
    levels: int,
    flows_per_level: int,
    hidden_channels: int,
    mixing: str = "emerging",
    num_classes: int | None = None,
    split_mode: str = "channel",
    scale: bool = True,
    **mixing_kwargs: Any,
) -> ImageMultiscaleFlow:
    """Multiscale Glow-style model of ``GlowStep``\\ s with a registered mixing layer.

    ``build_glow`` with ``GlowStep(channels, hidden_channels, mixing, ...)`` as the step;
    ``mixing="plu"`` is normflows' Glow (GlowBlocks), parameter for parameter.

    Args:
      input_shape: (channels, height, width) of the data; height and width divisible by
        2**levels
      levels: number of levels, at least 1
      flows_per_level: number of GlowSteps per level, at least 1
      hidden_channels: hidden channels of the coupling networks, at least 1
      mixing: name of a registered mixing layer, see ``mixing_layers()``
      num_classes: number of classes for a class-conditional model, or None
      split_mode: how the couplings split their input, see ``normflows.flows.Split``
      scale: whether the couplings scale (else they only shift)
      **mixing_kwargs: passed to the mixing layer's factory

    Returns:
      ``ImageMultiscaleFlow``, see ``build_glow``

    Raises:
      ValueError: if the shape, the counts, ``split_mode`` or ``mixing`` are invalid
      TypeError: if the mixing layer's factory does not return a ``normflows.flows.Flow``
    """
    hidden_channels = check_positive_int("hidden_channels", hidden_channels)

    def make_step(channels: int) -> GlowStep:
        return GlowStep(
            channels, hidden_channels, mixing, scale=scale, split_mode=split_mode, **mixing_kwargs
        )

    return build_glow(input_shape, levels, flows_per_level, make_step, num_classes)


def _check_shape(input_shape: Any, levels: int) -> Shape:
    """Check ``input_shape`` against ``levels``; return it as a tuple of ints."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    valid = shape is not None and len(shape) == 3
    if valid:
        try:
            shape = tuple(check_positive_int("input_shape entry", n) for n in shape)
        except ValueError:
            valid = False
    if not valid:
        raise ValueError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}"
        )
    if shape[1] % 2**levels or shape[2] % 2**levels:
        raise ValueError(
            f"height and width of input_shape {shape} must be divisible by 2**levels = {2**levels}"
        )
    return shape


def _reads_values(x: torch.Tensor) -> bool:
    """Whether the model's checks may read ``x``'s values: not while ``torch.compile`` traces
    (a graph break) nor under a transform, which cannot give a value (see
    :func:`~normflows_emerging.solve.transforms.under_transform`); a state they would refuse
    then comes out as NaN."""
    return not torch.compiler.is_compiling() and not under_transform(x)
