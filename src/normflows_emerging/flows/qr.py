"""QR-parametrised invertible 1x1 convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from torch import nn

from ..solve import device
from ..solve.transforms import under_transform
from .arguments import check_int, check_positive_int
from .bounded import accept_unbounded_checkpoints, bounded_log_scale
from .cache import DropsCacheOnModeChange, ValueKeyedCache, cached, reusable
from .grouped import group_key, grouped
from .precision import full_precision
from .utils import check_finite_output, check_image, empty_result, is_empty


class QR1x1(DropsCacheOnModeChange, Flow):
    """Invertible 1x1 convolution ``W = Q R``.

    From Hoogeboom, van den Berg, Welling, "Emerging Convolutions for Generative Normalizing
    Flows", ICML 2019, section 3.3, https://arxiv.org/abs/1901.11137

    ``Q`` is a product of Householder reflections ``I - 2 v v^T / v^T v`` (orthogonal, so it adds
    nothing to the log-determinant) and ``R`` is upper-triangular with diagonal ``exp(log_s)``,
    ``log_s = 10 tanh(raw_log_s / 10)`` (see :mod:`normflows_emerging.flows.bounded`: the
    diagonal stays in (4.5e-5, 2.2e4), so it never rounds to 0), hence
    ``log|det| = H * W * sum(log_s)``. ``inverse`` (density direction) applies ``W``,
    ``forward`` (sampling direction) applies ``W^-1 = R^-1 Q^T``.

    In eval mode, while no gradient with respect to the parameters is recorded, ``W`` and
    ``W^-1`` are computed once and reused for as long as the parameters keep their values.
    """

    def __init__(self, num_channels: int, num_reflections: int | None = None):
        """Constructor

        Args:
          num_channels: number of channels C
          num_reflections: Householder vectors in Q (default C, enough for any orthogonal
            matrix up to reflection); 0 makes Q the identity

        Raises:
          ValueError: unless the channel count is a positive int and the number of reflections
            an int >= 0 (bools refused, numpy ints accepted)
        """
        super().__init__()
        num_channels = check_positive_int("num_channels", num_channels)
        if num_reflections is None:
            num_reflections = num_channels
        num_reflections = check_int("num_reflections", num_reflections, 0)
        self.num_channels, self.num_reflections = num_channels, num_reflections
        self.reflections = nn.Parameter(torch.randn(num_reflections, num_channels))
        self.upper = nn.Parameter(torch.zeros(num_channels, num_channels))
        self.raw_log_s = nn.Parameter(torch.zeros(num_channels))
        accept_unbounded_checkpoints(self, "log_s", "raw_log_s")
        self._cache = ValueKeyedCache()

    @property
    def log_s(self) -> torch.Tensor:
        """Log of R's diagonal, shape (C,), inside (-10, 10)."""
        return bounded_log_scale(self.raw_log_s)

    def orthogonal(self) -> torch.Tensor:
        """Q = H_1 H_2 ... H_n as a (C, C) matrix.

        Compact WY form (Joffrain et al. 2006, "Accumulating Householder transformations,
        revisited"): with unit vectors u_i as the columns of U, ``Q = I - U T U^T`` where
        ``T^-1 = strictly_upper(U^T U) + I / 2``; one triangular solve instead of n products.

        Each vector is divided by its largest magnitude before it is normalised, so tiny or
        huge vectors neither underflow nor overflow. A zero vector defines no reflection (and
        no limit: the reflection depends on its direction), so it is an error, as is a
        non-finite one. Checked in eager CPU calls only: on an accelerator (reading a value would
        synchronise the host with the device), under ``torch.compile`` (a data-dependent branch
        breaks the graph) and under ``torch.func`` transforms (which cannot branch on a value)
        such a vector makes W NaN instead.

        Raises:
          torch.linalg.LinAlgError: if a reflection vector is zero or has inf/NaN entries (CPU)
        """
        if self.num_reflections == 0:
            return torch.eye(self.num_channels, dtype=self.upper.dtype, device=self.upper.device)
        largest = largest_entries(self.reflections)
        check_reflections([self], self.reflections[None], largest[None])
        return compact_wy_orthogonal(self.reflections, largest)

    def triangular(self) -> torch.Tensor:
        """R: (C, C) upper-triangular with diagonal exp(log_s)."""
        return upper_triangular(self.upper, self.log_s)

    def weight(self) -> torch.Tensor:
        """W = Q R, shape (C, C); ``inverse`` computes ``y[:, o] = sum_c W[o, c] x[:, c]``.

        A new tensor on every call (never the cached one, which a caller could change in place).
        """
        return self._matrix("weight").clone()

    def weight_inverse(self) -> torch.Tensor:
        """W^-1 = R^-1 Q^T, shape (C, C); a new tensor on every call, as for :meth:`weight`."""
        return self._matrix("weight_inverse").clone()

    def matrix_parameters(self) -> list[torch.Tensor]:
        """The parameters W and W^-1 are computed from."""
        return [self.reflections, self.upper, self.raw_log_s]

    def _matrix(self, name):
        """W or W^-1, the cached tensor itself in eval mode: only for use inside the package."""
        found = cached(self, self.matrix_parameters(), name, lambda: {name: self._compute(name)})
        return found[name]

    def _compute(self, name):
        if name == "weight":
            return self.orthogonal() @ self.triangular()
        return torch.linalg.solve_triangular(self.triangular(), self.orthogonal().T, upper=True)

    def log_det(self, x: torch.Tensor) -> torch.Tensor:
        """log|det| of the density pass for inputs shaped like x: H * W * sum(log_s), (batch,)."""
        return (self.log_s.sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    @full_precision
    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction: apply W.

        Args:
          x: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          W x of the same shape and log|det| = H * W * sum(log_s), shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if a reflection vector is zero or not finite (CPU only, see
            :meth:`orthogonal`)
        """
        check_image(x, self.num_channels, type(self).__name__, self.upper)
        if is_empty(x):
            return empty_result(x)
        planned = None
        if not reusable(self, self.matrix_parameters()):
            planned = grouped(self, x.shape[2] * x.shape[3])
        if planned is None:
            return F.conv2d(x, self._matrix("weight")[:, :, None, None]), self.log_det(x)
        weight, log_det = planned
        return F.conv2d(x, weight[:, :, None, None]), log_det.expand(x.shape[0])

    @full_precision
    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: apply W^-1 = R^-1 Q^T.

        Args:
          z: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          W^-1 z of the same shape and -H * W * sum(log_s), shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if applying W^-1 overflows (finite z, non-finite output) or
            a reflection vector is zero or not finite; checked on the CPU only (on a GPU the
            inf/NaN values are returned, see ``docs/gpu.md``)
        """
        check_image(z, self.num_channels, type(self).__name__, self.upper)
        if is_empty(z):
            return empty_result(z)
        x = F.conv2d(z, self._matrix("weight_inverse")[:, :, None, None])
        check_finite_output(x, z, type(self).__name__)
        return x, -self.log_det(z)

    def _group_key(self):
        return group_key(self, QR1x1, self.num_reflections)

    def _grouped_submodules(self):
        return []

    def _grouped_parameters(self):
        return self.matrix_parameters()

    @staticmethod
    def _derive_group(layers, pixels):
        """W and the log-det per image, ``pixels * sum(log_s)``, of each layer in ``layers``
        (QR1x1 layers of one shape), computed together (see
        :mod:`normflows_emerging.flows.grouped`)."""
        weights, log_s = stacked_weights(layers)
        return list(zip(weights.unbind(0), (log_s.sum(-1) * pixels).unbind(0)))

    def extra_repr(self):
        return f"num_channels={self.num_channels}, num_reflections={self.num_reflections}"


def largest_entries(reflections: torch.Tensor) -> torch.Tensor:
    """Largest magnitude of each reflection vector, shape (..., n, 1) for (..., n, C).

    Detached: Q does not depend on the vectors' lengths, so no gradient flows through the
    scale they are divided by (its exact contribution is zero).
    """
    return reflections.detach().abs().amax(dim=-1, keepdim=True)


def check_reflections(layers, reflections: torch.Tensor, largest: torch.Tensor) -> None:
    """Raise unless every reflection vector of ``layers`` defines a reflection (see
    :meth:`QR1x1.orthogonal`); in eager CPU calls only (not on an accelerator, under
    ``torch.compile`` or under ``torch.func`` transforms), one read of a value for all of them.

    Args:
      layers: the QR1x1 layers, in the order of the stack
      reflections: their reflection vectors, stacked, (N, n, C)
      largest: :func:`largest_entries` of ``reflections``

    Raises:
      torch.linalg.LinAlgError: naming the first layer's zero or non-finite vector
    """
    if (
        device.on_accelerator(largest)
        or torch.compiler.is_compiling()
        or under_transform(reflections)
    ):
        return
    with torch.no_grad():
        usable = (largest > 0) & torch.isfinite(reflections).all(dim=-1, keepdim=True)
    if not usable.all():
        layer, index = (int(i) for i in (~usable).nonzero()[0, :2])
        raise torch.linalg.LinAlgError(
            f"{type(layers[layer]).__name__}: reflection vector {index} is zero or not finite, "
            f"so it defines no Householder reflection; reinitialise reflections[{index}]"
        )


def compact_wy_orthogonal(reflections: torch.Tensor, largest: torch.Tensor) -> torch.Tensor:
    """Product of the Householder reflections of the rows of ``reflections`` (..., n, C), as
    (..., C, C), in compact WY form (see :meth:`QR1x1.orthogonal`), for n >= 1.

    ``largest`` is :func:`largest_entries` of ``reflections``: each vector is divided by it
    before it is normalised, so tiny or huge vectors neither underflow nor overflow.
    """
    n, channels = reflections.shape[-2:]
    like = dict(dtype=reflections.dtype, device=reflections.device)
    scaled = reflections / largest
    u = scaled / torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    t_inv = (u @ u.mT).triu(1) + 0.5 * torch.eye(n, **like)
    return torch.eye(channels, **like) - u.mT @ torch.linalg.solve_triangular(t_inv, u, upper=True)


def upper_triangular(upper: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """R = strictly_upper(upper) + diag(exp(log_s)), shape (..., C, C) for upper (..., C, C)
    and log_s (..., C)."""
    return upper.triu(1) + torch.diag_embed(log_s.exp())


def stacked_weights(layers) -> tuple[torch.Tensor, torch.Tensor]:
    """W = Q R of the QR1x1 layers ``layers`` (all of one shape, dtype and device), stacked as
    (N, C, C), and their log_s, (N, C): one batched computation for all of them. Reflection
    vectors are checked as :meth:`QR1x1.orthogonal` checks them."""
    upper = torch.stack([layer.upper for layer in layers])
    log_s = bounded_log_scale(torch.stack([layer.raw_log_s for layer in layers]))
    if layers[0].num_reflections == 0:
        orthogonal = layers[0].orthogonal()  # the identity
    else:
        reflections = torch.stack([layer.reflections for layer in layers])
        largest = largest_entries(reflections)
        check_reflections(layers, reflections, largest)
        orthogonal = compact_wy_orthogonal(reflections, largest)
    return orthogonal @ upper_triangular(upper, log_s), log_s
