"""Emerging convolution: 1x1 convolution followed by two opposite square autoregressive ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from torch import nn
from torch.nn.modules import module as module_hooks

from ..solve import fused_emerging_step
from .arguments import check_odd_int, check_positive_int
from .autoregressive import SquareAutoregressiveConv2d, stacked_kernels
from .cache import DropsCacheOnModeChange, ValueKeyedCache, reusable
from .grouped import group_key, grouped
from .precision import full_precision
from .qr import QR1x1, stacked_weights
from .solver import chosen_backend
from .utils import check_finite_output, check_image, empty_result, is_empty, plu_1x1_conv

ONE_BY_ONE_CHOICES = ("qr", "plu", "none")


class EmergingConv2d(DropsCacheOnModeChange, Flow):
    """Invertible k x k convolution that emerges from two (k+1)/2 autoregressive convolutions.

    From Hoogeboom, van den Berg, Welling, "Emerging Convolutions for Generative Normalizing
    Flows", ICML 2019, section 3.1, https://arxiv.org/abs/1901.11137

    Density direction (``inverse``): 1x1 convolution (QR by default) -> causal autoregressive
    convolution of size m = (k+1)/2 -> the mirrored (flipped) one. Their chain has exactly a
    k x k receptive field. The two small convolutions run one after the other (not merged into
    one k x k filter, which would differ at the borders and lose exact invertibility), so
    log|det| is the sum of the three layers' log-determinants.

    Sampling direction (``forward``): the three layers' inverses in reverse order; the two
    autoregressive ones are triangular solves (see :mod:`normflows_emerging.solve`).
    """

    def __init__(
        self, num_channels: int, kernel_size: int = 3, one_by_one: str = "qr", solver: str = "auto"
    ):
        """Constructor

        Args:
          num_channels: number of channels C
          kernel_size: odd receptive field k >= 3
          one_by_one: ``"qr"`` (:class:`QR1x1`), ``"plu"`` (normflows' LU ``Invertible1x1Conv``)
            or ``"none"``
          solver: backend of both autoregressive solves, ``"auto"``, ``"compiled"``, ``"torch"``
            or ``"naive"`` (see :class:`SquareAutoregressiveConv2d`); also settable later as
            the ``solver`` attribute. :func:`normflows_emerging.use_backend` overrides it.

        Raises:
          ValueError: for a channel count that is not a positive int, a kernel size that is not
            an odd int >= 3 (bools refused, numpy ints accepted), an unknown ``one_by_one`` or
            solver
        """
        super().__init__()
        num_channels = check_positive_int("num_channels", num_channels)
        kernel_size = check_odd_int("kernel_size", kernel_size, 3)
        if one_by_one not in ONE_BY_ONE_CHOICES:
            raise ValueError(f"one_by_one must be one of {ONE_BY_ONE_CHOICES}, got {one_by_one!r}")
        self.num_channels, self.kernel_size = num_channels, kernel_size
        size = (kernel_size + 1) // 2
        if one_by_one == "qr":
            self.one_by_one = QR1x1(num_channels)
        elif one_by_one == "plu":
            self.one_by_one = plu_1x1_conv(num_channels)
        else:
            self.one_by_one = None
        self.causal = SquareAutoregressiveConv2d(num_channels, size, flip=False, solver=solver)
        self.anticausal = SquareAutoregressiveConv2d(num_channels, size, flip=True, solver=solver)
        self._cache = ValueKeyedCache()

    @property
    def solver(self) -> str:
        """Backend of both autoregressive solves (see the constructor)."""
        return self.causal.solver

    @solver.setter
    def solver(self, value: str) -> None:
        self.causal.solver = value
        self.anticausal.solver = value

    @full_precision
    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction.

        Args:
          x: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          y of the same shape and log|det dy/dx| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if a reflection vector of the QR 1x1 layer is zero or not
            finite (CPU only, see :meth:`QR1x1.orthogonal`)
        """
        check_image(x, self.num_channels, type(self).__name__, self.causal.weight)
        if is_empty(x):
            return empty_result(x)
        plan = self._plan()
        if plan is not None:
            y = self.causal.convolve(x, plan["causal_density_kernel"])
            y = self.anticausal.convolve(y, plan["anticausal_density_kernel"])
            return y, (plan["log_det_per_pixel"] * (x.shape[2] * x.shape[3])).expand(x.shape[0])
        planned = grouped(self, x.shape[2] * x.shape[3])
        if planned is not None:
            causal_filter, anticausal_filter, log_det = planned
            y = self.causal.convolve(x, causal_filter)
            return self.anticausal.convolve(y, anticausal_filter), log_det.expand(x.shape[0])
        if isinstance(self.one_by_one, QR1x1):  # folded into the causal kernel: one conv less
            log_det = self.one_by_one.log_det(x)
            # the cached W itself in eval mode: the einsum that folds it in does not change it
            x, ld = self.causal.premixed_inverse(x, self.one_by_one._matrix("weight"))
        else:
            log_det = x.new_zeros(x.shape[0])
            if self.one_by_one is not None:
                x, ld = self.one_by_one.inverse(x)
                log_det = log_det + ld
            x, ld = self.causal.inverse(x)
        log_det = log_det + ld
        x, ld = self.anticausal.inverse(x)
        return x, log_det + ld

    @full_precision
    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction. Both solves use the layer's ``solver``, or the one of
        :func:`normflows_emerging.use_backend` around the call.

        Args:
          z: tensor of shape (batch, C, H, W), the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          x of the same shape and log|det dx/dz| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if a step turns finite values into inf/NaN; checked on the
            CPU only (on a GPU reading the result would synchronise: the inf/NaN values are
            returned, see ``docs/gpu.md``)
        """
        check_image(z, self.num_channels, type(self).__name__, self.causal.weight)
        if is_empty(z):
            return empty_result(z)
        plan = self._plan()
        if plan is not None:
            step = fused_emerging_step(chosen_backend(self.solver), z)
            if step is not None:  # one launch for the whole step (the triton backend)
                x = step(
                    z, plan["anticausal_kernel"], self.anticausal.bias, plan["causal_kernel"],
                    self.causal.bias, plan["weight_inverse"], self.causal.dilation,
                )  # fmt: skip
            else:
                x = self.anticausal.solve(z, plan["anticausal_kernel"])
                x = self.causal.solve(x, plan["causal_kernel"])
                if plan["weight_inverse"] is not None:
                    x = F.conv2d(x, plan["weight_inverse"])
            check_finite_output(x, z, type(self).__name__)
            return x, (plan["log_det_per_pixel"] * (-z.shape[2] * z.shape[3])).expand(z.shape[0])
        z, log_det = self.anticausal(z)
        z, ld = self.causal(z)
        log_det = log_det + ld
        if self.one_by_one is not None:
            x, ld = self.one_by_one(z)
            if not isinstance(self.one_by_one, QR1x1):  # normflows' PLU layer does not check
                check_finite_output(x, z, type(self).__name__)
            z, log_det = x, log_det + ld
        return z, log_det

    def _plan(self) -> dict | None:
        """What both directions need from the parameters, computed once per parameter values.

        Only in eval mode without gradients to the parameters, only with a QR or no 1x1 layer
        (normflows' LU layer keeps its own state), and only while no forward hook would run for
        a sublayer, its own or a global one (the plan does not call the sublayers); else None.
        One lookup for all three layers instead of one each: at batch 1 the lookups and
        per-layer checks cost as much as the solves. Holds the two kernels (for the solves) and
        the two density filters (the anti-causal one reversed, W folded into the causal one),
        ``W^-1`` as a (C, C, 1, 1) filter and the log-det per pixel of the density direction.
        """
        if isinstance(self.one_by_one, nn.Module) and not isinstance(self.one_by_one, QR1x1):
            return None
        if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
            return None  # torch.nn.modules.module.register_module_forward_hook: as below
        if any(
            layer._forward_hooks or layer._forward_pre_hooks
            for layer in (self.causal, self.anticausal, self.one_by_one)
            if layer is not None
        ):
            return None  # the plan skips the sublayers' calls, so their hooks would not run
        tensors = self._grouped_parameters()
        if not reusable(self, tensors):
            return None
        return self._cache.get(
            tensors,
            torch.is_inference_mode_enabled(),
            self._compute_plan,
            constants=self.causal.constants() + self.anticausal.constants(),
        )

    @torch.no_grad()
    def _compute_plan(self) -> dict:
        causal_kernel = self.causal.causal_kernel()
        anticausal_kernel = self.anticausal.causal_kernel()
        log_det_per_pixel = self.causal.log_d.sum() + self.anticausal.log_d.sum()
        weight = weight_inverse = None
        if self.one_by_one is not None:
            weight = self.one_by_one.weight()
            weight_inverse = self.one_by_one.weight_inverse()[:, :, None, None]
            log_det_per_pixel = log_det_per_pixel + self.one_by_one.log_s.sum()
        return dict(
            causal_kernel=causal_kernel,
            anticausal_kernel=anticausal_kernel,
            causal_density_kernel=self.causal.density_kernel(causal_kernel, weight),
            anticausal_density_kernel=self.anticausal.density_kernel(anticausal_kernel),
            weight_inverse=weight_inverse,
            log_det_per_pixel=log_det_per_pixel,
        )

    def _group_key(self):
        sublayers = (self.causal, self.anticausal)
        if any(type(layer) is not SquareAutoregressiveConv2d for layer in sublayers) or (
            self.one_by_one is not None and type(self.one_by_one) is not QR1x1
        ):
            return None
        return group_key(self, EmergingConv2d, self.kernel_size, self.one_by_one is None)

    def _grouped_submodules(self):
        layers = (self.one_by_one, self.causal, self.anticausal)
        return [layer for layer in layers if layer is not None]

    def _grouped_parameters(self):
        """The parameters the kernels, W and the log-det are computed from (QR or no 1x1)."""
        tensors = self.causal.kernel_parameters() + self.anticausal.kernel_parameters()
        if self.one_by_one is not None:
            tensors += self.one_by_one.matrix_parameters()
        return tensors

    @staticmethod
    def _derive_group(layers, pixels):
        """The two density filters (W folded into the causal one) and the log-det per image
        of each layer in ``layers`` (of one shape), computed together (see
        :mod:`normflows_emerging.flows.grouped`); the log-det adds the three layers' terms in
        the order :meth:`inverse` adds them."""
        causal, causal_log_d = stacked_kernels([layer.causal for layer in layers])
        anticausal, anticausal_log_d = stacked_kernels([layer.anticausal for layer in layers])
        log_det, weight = causal_log_d.sum(-1) * pixels, None
        if layers[0].one_by_one is not None:
            weight, log_s = stacked_weights([layer.one_by_one for layer in layers])
            log_det = log_s.sum(-1) * pixels + log_det
        log_det = log_det + anticausal_log_d.sum(-1) * pixels
        causal = layers[0].causal.density_kernel(causal, weight)
        anticausal = layers[0].anticausal.density_kernel(anticausal)
        return list(zip(causal.unbind(0), anticausal.unbind(0), log_det.unbind(0)))

    def extra_repr(self):
        return (
            f"num_channels={self.num_channels}, kernel_size={self.kernel_size}, "
            f"solver={self.solver!r}"
        )
