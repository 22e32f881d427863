"""Periodic convolution: an invertible k x k convolution with wrap-around borders.

A circular convolution is diagonalised by the 2-D discrete Fourier transform: at every frequency
(u, v) it acts on the C channels as one complex C x C matrix K̂(u, v). Its log-determinant is the
sum of ``log|det K̂(u, v)|`` over the H x W frequencies and its inverse multiplies by K̂(u, v)⁻¹
(Hoogeboom et al. 2019, section 3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from torch import nn

from ..solve import device
from ..solve.transforms import under_transform
from .arguments import check_bool, check_odd_int, check_positive_int
from .cache import DropsCacheOnModeChange, ValueKeyedCache, cached, reusable
from .grouped import group_key, grouped
from .precision import full_precision
from .utils import check_finite_output, check_image, empty_result, is_empty

_METHODS = ("auto", "spatial", "fft")

# Largest relative error of a sample tolerated from the conditioning of a frequency matrix: the
# sampling solve refuses a kernel when cond(K̂(u, v)) * eps(input dtype) exceeds it.
MAX_RELATIVE_ERROR = 1e-3

# Up to this many images, the per-frequency products run as real batched matrix products ([Re, Im]
# rows times a 2C x 2C real block): measured 1.0-4.5x faster than einsum's complex products at
# batch 1-16, C = 12-48, and 1.2-1.8x slower at batch 64 (CPU, 1 thread).
MAX_REAL_PRODUCT_BATCH = 16


class PeriodicConv2d(DropsCacheOnModeChange, Flow):
    """Invertible periodic (circular) convolution with an unconstrained C x C x k x k kernel.

    From Hoogeboom, van den Berg, Welling, "Emerging Convolutions for Generative Normalizing
    Flows", ICML 2019, section 3.2, https://arxiv.org/abs/1901.11137

    The density direction (``inverse``) is the centred circular cross-correlation plus bias,

        ``y[o, i, j] = b[o] + sum_{c, a, d} W[o, c, a, d] x[c, (i + a - p) % H, (j + d - p) % W]``

    with ``p = (k - 1) // 2``; the sampling direction (``forward``) solves it in the Fourier domain,
    ``x = irfft2(K̂⁻¹ · rfft2(y - b))``. The kernel spectrum and ``log|det|`` are computed in
    complex128 whatever the input dtype, so the log-determinant (a sum over H*W frequencies) stays
    accurate in float32 training.

    In eval mode, when no gradient with respect to the kernel is being recorded, the layer keeps
    ``log|det|`` and K̂⁻¹ per input size, device and dtype, for as long as the kernel is unchanged
    (see :class:`~normflows_emerging.flows.cache.ValueKeyedCache` for what it sees without
    reading GPU values); the cache is dropped whenever the module's mode is set (``train()``,
    ``eval()``).
    """

    def __init__(
        self, num_channels: int, kernel_size: int = 3, bias: bool = True, method: str = "auto"
    ):
        """Constructor

        Args:
          num_channels: number of channels C of the data
          kernel_size: odd kernel size k (1, 3, 5, ...); images must be at least k x k
          bias: whether to add a learnable per-channel bias
          method: how the density direction convolves: ``"spatial"`` (circular padding +
            conv2d), ``"fft"`` (product in the Fourier domain) or ``"auto"`` (whichever is
            expected to be faster for the shape); all give the same result. Also settable later
            as the ``method`` attribute.

        The kernel is initialised near the identity: centre tap a random orthogonal matrix, the
        other taps small Gaussian noise, so that no frequency matrix starts singular.

        Raises:
          ValueError: unless the channel count is a positive int and the kernel size an odd
            int >= 1 (bools refused, numpy ints accepted), or for an unknown method
          TypeError: if ``bias`` is not a bool
        """
        super().__init__()
        num_channels = check_positive_int("num_channels", num_channels)
        kernel_size = check_odd_int("kernel_size", kernel_size, 1)
        bias = check_bool("bias", bias)
        self.num_channels = num_channels
        self.kernel_size = kernel_size
        self.method = method
        centre = kernel_size // 2
        weight = torch.randn(num_channels, num_channels, kernel_size, kernel_size)
        weight *= 0.01 / (kernel_size * num_channels**0.5)
        weight[:, :, centre, centre] = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None
        self._cache = ValueKeyedCache()

    @property
    def method(self) -> str:
        """How the density direction convolves (see the constructor)."""
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        if value not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {value!r}")
        self._method = value

    @property
    def min_image_size(self) -> int:
        """Smallest image height and width the layer takes: its kernel size."""
        return self.kernel_size

    def extra_repr(self):
        return (
            f"num_channels={self.num_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, method={self.method!r}"
        )

    def _check(self, x):
        check_image(x, self.num_channels, type(self).__name__, self.weight)
        k = self.kernel_size
        if x.shape[2] < k or x.shape[3] < k:
            raise ValueError(
                f"{type(self).__name__} with kernel_size={k} needs images of at least {k}x{k}, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )

    def spectrum(self, height, width):
        """Kernel spectrum over the frequencies that ``torch.fft.rfft2`` stores.

        Args:
          height: image height H
          width: image width W

        Returns:
          complex128 tensor K̂ of shape (H, W // 2 + 1, C, C); for real x with X = rfft2(x),
          ``rfft2(conv(x))[:, :, u, v] = K̂[u, v] @ X[:, :, u, v]`` (bias aside)
        """
        return kernel_spectrum(self.weight, height, width)

    @staticmethod
    def _log_abs_det(khat, width):
        """Sum of log|det K̂(u, v)| over all H x W frequencies, from the rfft2 half (complex128)."""
        return spectrum_log_abs_det(khat, width)

    def _log_det(self, x, khat=None):
        """log|det| as a 0-d tensor in x's dtype; reuses the eval cache when allowed."""
        height, width = x.shape[2], x.shape[3]

        def compute():
            spectrum = self.spectrum(height, width) if khat is None else khat
            return {"log_det": self._log_abs_det(spectrum, width).to(x.dtype)}

        return cached(self, [self.weight], (height, width, "log_det"), compute)["log_det"]

    def _inverse_spectrum(self, x):
        """(K̂⁻¹ in x's complex dtype, its ``_real_block``, log|det| in x's dtype), cached in eval
        mode."""
        found = cached(
            self,
            [self.weight],
            (x.shape[2], x.shape[3], "inverse"),
            lambda: self._compute_inverse_spectrum(x),
        )
        return found["khat_inv"], found["khat_inv_block"], found["log_det"]

    def _compute_inverse_spectrum(self, x):
        height, width = x.shape[2], x.shape[3]
        khat = self.spectrum(height, width)
        khat_inv, info = torch.linalg.inv_ex(khat)
        with torch.no_grad():
            # 1-norm condition number (computed in complex128); the sample's relative error
            # grows like cond * eps of the dtype the sample is computed in.
            cond = torch.linalg.matrix_norm(khat, ord=1) * torch.linalg.matrix_norm(khat_inv, ord=1)
            limit = MAX_RELATIVE_ERROR / torch.finfo(x.dtype).eps
            bad = (info != 0) | ~(cond <= limit)
        if device.on_accelerator(bad) or under_transform(khat):
            # no host read (a synchronisation, or a value a transform cannot give): the sample
            # comes out NaN instead, which ImageMultiscaleFlow.sample reports
            khat_inv = khat_inv.masked_fill(bad[..., None, None], float("nan"))
        elif bad.any():
            u, v = (int(i) for i in bad.nonzero()[0])
            raise torch.linalg.LinAlgError(
                f"{type(self).__name__}: the kernel's frequency matrix K̂({u}, {v}) is "
                f"singular or too ill-conditioned for {x.dtype} (condition number "
                f"{float(cond[u, v]):.3g} > {limit:.3g}) for {height}x{width} images, so the "
                f"convolution cannot be inverted accurately"
            )
        khat_inv = khat_inv.to(torch.promote_types(x.dtype, torch.complex64))
        return dict(
            khat_inv=khat_inv,
            khat_inv_block=self._real_block(khat_inv),
            log_det=self._log_abs_det(khat, width).to(x.dtype),
        )

    @staticmethod
    def _real_block(matrices):
        """(U*V, 2C, 2O) real R with ``[Re y, Im y] = [Re x, Im x] @ R[u, v]`` for
        ``y = matrices[u, v] @ x`` (row vectors), from complex matrices of shape (U, V, O, C)."""
        matrices = matrices.resolve_conj()  # vmap cannot take the imaginary part of a conj view
        a, b = matrices.real.transpose(-1, -2), matrices.imag.transpose(-1, -2)
        block = torch.cat([torch.cat([a, b], -1), torch.cat([-b, a], -1)], -2)
        return block.reshape(-1, block.shape[-2], block.shape[-1])

    @classmethod
    def _apply_spectrum(cls, matrices, x, real_block=None):
        """irfft2 of ``matrices[u, v] @ rfft2(x)[:, :, u, v]`` for every frequency.

        Up to ``MAX_REAL_PRODUCT_BATCH`` images the products run as one real batched matrix
        product with ``real_block`` (``_real_block(matrices)`` if not given), else as einsum's
        complex products.
        """
        x_hat = torch.fft.rfft2(x)
        if x.shape[0] > MAX_REAL_PRODUCT_BATCH:
            y_hat = torch.einsum("uvoc,bcuv->bouv", matrices, x_hat)
        else:
            if real_block is None:
                real_block = cls._real_block(matrices)
            batch, channels, height, half_width = x_hat.shape
            rows = (
                torch.view_as_real(x_hat)
                .permute(2, 3, 0, 4, 1)
                .reshape(height * half_width, batch, 2 * channels)
            )
            y = torch.bmm(rows, real_block).reshape(height, half_width, batch, 2, -1)
            y_hat = torch.view_as_complex(y.permute(2, 4, 0, 1, 3).contiguous())
        return torch.fft.irfft2(y_hat, s=x.shape[2:])

    def _prefer_fft(self):
        """Whether "auto" picks the FFT path for the density direction.

        Per pixel the spatial path costs about k² C² multiply-adds, the FFT path C log(HW) + C²
        (small batched complex products, slow on CPU) plus fixed overhead. Measured on CPU for
        4x4 to 64x64 images, the FFT path only won once k² exceeded about 16 C.
        """
        return self.kernel_size**2 > 16 * self.num_channels

    @full_precision
    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction: circular cross-correlation plus bias, computed as the layer's
        ``method`` says.

        Args:
          x: data, shape (batch, C, H, W) with H, W >= kernel_size, the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          z of shape (batch, C, H, W) and log|det dz/dx| of shape (batch,) (the same for every
          sample, -inf if the kernel is singular)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
        """
        self._check(x)
        if is_empty(x):
            return empty_result(x)
        method = self.method
        if method == "auto":
            method = "fft" if self._prefer_fft() else "spatial"
        khat = log_det = index = None
        if not reusable(self, [self.weight]):
            planned = grouped(self, x.shape[2], x.shape[3], x.dtype)
            if planned is not None:
                khat, log_det, index = planned
        if method == "fft":
            if khat is None:
                khat = self.spectrum(x.shape[2], x.shape[3])
            z = self._apply_spectrum(khat.to(torch.promote_types(x.dtype, torch.complex64)), x)
            if self.bias is not None:
                z = z + self.bias.view(1, -1, 1, 1)
        else:
            z = F.conv2d(circular_pad(x, self.kernel_size // 2, index), self.weight, self.bias)
        if log_det is None:
            log_det = self._log_det(x, khat)
        return z, log_det.repeat(x.shape[0])

    def _group_key(self):
        return group_key(self, PeriodicConv2d, self.kernel_size)

    def _grouped_submodules(self):
        return []

    def _grouped_parameters(self):
        return [self.weight]

    @staticmethod
    def _derive_group(layers, height, width, dtype):
        """Kernel spectrum (complex128), log|det| (``dtype``) and the :func:`circular_pad`
        index for height x width images of each layer in ``layers`` (of one shape), computed
        together (see :mod:`normflows_emerging.flows.grouped`)."""
        weight = torch.stack([layer.weight for layer in layers])
        khat = kernel_spectrum(weight, height, width)
        log_det = spectrum_log_abs_det(khat, width).to(dtype)
        index = wrapped_index(height, width, layers[0].kernel_size // 2, weight.device)
        return [(k, d, index) for k, d in zip(khat.unbind(0), log_det.unbind(0))]

    @full_precision
    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: solve the circular convolution in the Fourier domain.

        Args:
          z: latent, shape (batch, C, H, W) with H, W >= kernel_size, the layer's dtype and device
          context: ignored; accepted so that the layer fits normflows' conditional flows and
            ``FlowTest`` (normflows' signature)

        Returns:
          x of shape (batch, C, H, W) and log|det dx/dz| = -log|det dz/dx| of shape (batch,)

        Raises:
          TypeError, ValueError: for an input of the wrong type, shape, dtype or device
          torch.linalg.LinAlgError: if a frequency matrix K̂(u, v) has a condition number above
            ``MAX_RELATIVE_ERROR / eps`` of z's dtype (1e-3 / eps: about 8.4e3 in float32,
            4.5e12 in float64), or the solve turns a finite z into inf/NaN values. Only on the
            CPU: on an accelerator reading the check's result would synchronise the host with
            the device, so such a kernel gives NaN samples instead
        """
        self._check(z)
        if is_empty(z):
            return empty_result(z)
        khat_inv, khat_inv_block, log_det = self._inverse_spectrum(z)
        shifted = z if self.bias is None else z - self.bias.view(1, -1, 1, 1)
        x = self._apply_spectrum(khat_inv, shifted, khat_inv_block)
        check_finite_output(x, z, type(self).__name__)
        return x, -log_det.repeat(z.shape[0])


def kernel_spectrum(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Spectrum of centred k x k kernels (..., C, C, k, k) on the periodic height x width grid,
    as complex128 (..., height, width // 2 + 1, C, C); see :meth:`PeriodicConv2d.spectrum`.

    Tap (a, d) reads offset (a - p, d - p), p = k // 2, and the cross-correlation multiplies by
    ``exp(+2 pi i (u (a - p) / H + v (d - p) / W))`` (the conjugate DFT), so the spectrum is
    the kernel's k^2 taps times a (k^2, H (W // 2 + 1)) matrix of these factors: one real matrix
    product, forward and backward (an FFT of the zero-padded kernel costs about 3x as much on
    the CPU, its backward more). Each entry sums k^2 products, as accurate as the FFT (equal to
    it to about 1e-15, relative).
    """
    k = weight.shape[-1]
    factors = (
        _phase_factors(height, k, weight.device)[:, None, :, None]
        * _phase_factors(width, k, weight.device, half=True)[None, :, None, :]
    )  # (k, k, H, W // 2 + 1)
    factors = torch.view_as_real(factors).reshape(k * k, -1)  # [Re, Im] interleaved
    taps = weight.to(torch.float64).flatten(-2)  # (..., C, C, k * k)
    spectrum = torch.view_as_complex((taps @ factors).unflatten(-1, (height, -1, 2)))
    return spectrum.movedim((-4, -3), (-2, -1))


def _phase_factors(size, k, device, half=False):
    """``exp(2 pi i f (a - k // 2) / size)`` for taps a (rows) and frequencies f (columns), the
    first ``size // 2 + 1`` frequencies only if ``half``; complex128. Computed as the conjugate
    FFT of unit impulses at the taps' offsets, so that they are the FFT's own factors (quarter
    turns exact: a kernel singular at a frequency gives an exactly singular K̂ there)."""
    offsets = torch.arange(-(k // 2), k - k // 2, device=device) % size
    impulses = torch.eye(size, dtype=torch.float64, device=device)[offsets]
    return (torch.fft.rfft(impulses) if half else torch.fft.fft(impulses)).conj()


def spectrum_log_abs_det(khat: torch.Tensor, width: int) -> torch.Tensor:
    """Sum of log|det K̂(u, v)| over all H x W frequencies from the rfft2 half
    (..., H, width // 2 + 1, C, C) of :func:`kernel_spectrum`, shape (...)."""
    logabsdet = torch.linalg.slogdet(khat)[1]  # (..., H, W // 2 + 1)
    # Columns 1 .. ceil(W/2) - 1 stand for themselves and their conjugate column W - v.
    paired = logabsdet[..., 1 : (width + 1) // 2].sum((-2, -1))
    return logabsdet.sum((-2, -1)) + paired


def circular_pad(x: torch.Tensor, pad: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="circular")`` for (..., H, W) tensors as one gather (one
    kernel launch forward and two backward, where ``F.pad`` launches 16 and 17).

    Args:
      x: tensor (..., H, W)
      pad: wrapped rows and columns added on each side
      index: :func:`wrapped_index` for x's size and ``pad``, if the caller has it
    """
    if pad == 0:
        return x
    height, width = x.shape[-2:]
    if index is None:
        index = wrapped_index(height, width, pad, x.device)
    return x.flatten(-2).index_select(-1, index).unflatten(-1, (height + 2 * pad, width + 2 * pad))


def wrapped_index(height: int, width: int, pad: int, device: torch.device) -> torch.Tensor:
    """Flat indices, ((H + 2 pad) * (W + 2 pad),), into an H x W image of its circularly padded
    version (see :func:`circular_pad`)."""
    rows = torch.arange(-pad, height + pad, device=device) % height
    columns = torch.arange(-pad, width + pad, device=device) % width
    return (rows[:, None] * width + columns).flatten()
