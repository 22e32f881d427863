"""Solving a causal (square autoregressive) convolution: backends, selection and autograd.

``solve_autoregressive(y, kernel)`` returns ``x`` with ``causal_conv(x, kernel) = y``, where
``kernel`` has shape (C, C, m, m), pixel (i, j) reads the m x m window whose bottom-right corner
is (i, j), and the corner tap is lower-triangular in (out, in) with a non-zero diagonal.

Backends (see :func:`backend_names`):
  * ``"torch"``: anti-diagonal wavefront in H + W - 1 batched torch steps; any device, the
    fallback where no faster backend is registered for a device.
  * ``"naive"``: element-by-element reference (tests, benchmark baseline).
  * faster solves plug in through one hook, :func:`register_backend`: normflows-emerging
    registers ``"compiled"`` (Cython + OpenMP, the CPU default when built) and ``"triton"``
    (Triton kernels, the CUDA default when triton imports) on import. A backend may also bring
    a fused sampling step of a whole emerging convolution (:func:`fused_emerging_step`).

Pick one for a whole model with ``use_backend(name)``, or per layer with the layers' ``solver``
argument. Every backend reads only the corner tap's lower triangle and diagonal; entries above
the diagonal are ignored and get zero gradient.

This package and :mod:`normflows_emerging.flows` import only torch, numpy, normflows and each
other.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .checks import check_solve_inputs
from .naive import solve_naive
from .transforms import legacy_batched, under_transform
from .wavefront import solve_wavefront

__all__ = [
    "backend_names",
    "fused_emerging_step",
    "inverse_backend",
    "register_backend",
    "selected_backend",
    "solve_autoregressive",
    "use_backend",
]

Solver = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# step(z, anticausal_kernel, anticausal_bias, causal_kernel, causal_bias, weight_inverse, dilation)
EmergingStep = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class _Backend:
    solve: Solver
    default_for: tuple[str, ...]
    unavailable_reason: Callable[[], str | None]
    emerging_step: EmergingStep | None


def _always_available() -> None:
    return None


_BACKENDS: dict[str, _Backend] = {}
_selected_backend = contextvars.ContextVar("normflows_emerging_backend", default=None)


def register_backend(
    name: str,
    solve: Solver,
    *,
    default_for: tuple[str, ...] = (),
    unavailable_reason: Callable[[], str | None] = _always_available,
    emerging_step: EmergingStep | None = None,
) -> None:
    """Make a solve available by name: the hook through which faster solves plug in.

    Args:
      name: the name for ``use_backend`` and the layers' ``solver`` argument
      solve: ``solve(y, kernel, dilation) -> x`` for inputs that :func:`solve_autoregressive`
        has already checked (non-empty, dilation capped at max(H, W)); it may raise
        ``TypeError``/``ValueError`` for dtypes or devices it does not run
      default_for: device types (``"cpu"``, ``"cuda"``) on which it is the default when
        available; a later registration for the same device type comes first
      unavailable_reason: returns None when the backend can run here, else one sentence saying
        why not and what to install
      emerging_step: optional fused sampling step of an emerging convolution,
        ``step(z, anticausal_kernel, anticausal_bias, causal_kernel, causal_bias, weight_inverse,
        dilation) -> x`` = ``W^-1 A_causal^-1 A_anticausal^-1 z`` (kernels in causal
        orientation as ``causal_kernel()`` returns them, ``weight_inverse`` (C, C, 1, 1) or
        None), for inputs the layer has checked; see :func:`fused_emerging_step`

    An ``unavailable_reason`` that raises counts as unavailable (its error is named in the
    warning of :func:`inverse_backend`).

    Raises:
      ValueError: ``name`` is taken or empty
      TypeError: ``solve``, ``unavailable_reason`` or ``emerging_step`` (when given) is not
        callable, or ``default_for`` is not a tuple of str
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    if name in _BACKENDS:
        raise ValueError(f"a solve backend named {name!r} is registered already")
    for label, function in (("solve", solve), ("unavailable_reason", unavailable_reason)):
        if not callable(function):
            raise TypeError(f"{label} must be callable, got {type(function).__name__}")
    if emerging_step is not None and not callable(emerging_step):
        raise TypeError(
            f"emerging_step must be callable or None, got {type(emerging_step).__name__}"
        )
    if not isinstance(default_for, tuple) or not all(isinstance(d, str) for d in default_for):
        raise TypeError(
            f"default_for must be a tuple of device type names such as ('cpu',), "
            f"got {default_for!r}"
        )
    _BACKENDS[name] = _Backend(solve, default_for, unavailable_reason, emerging_step)


def backend_names() -> tuple[str, ...]:
    """Names of the registered solve backends, in the order they were registered."""
    return tuple(_BACKENDS)


def _check_backend(name):
    if name not in _BACKENDS:
        raise ValueError(f"unknown solve backend {name!r}; expected one of {backend_names()}")


@contextlib.contextmanager
def use_backend(name):
    """Solve every autoregressive convolution inside the ``with`` block with backend ``name``.

    It overrides the layers' own ``solver`` choice, so it picks the solve of a whole model.

    Raises:
      ValueError: ``name`` is not a registered backend
    """
    _check_backend(name)
    token = _selected_backend.set(name)
    try:
        yield
    finally:
        _selected_backend.reset(token)


def selected_backend():
    """The backend chosen with :func:`use_backend` around this call, or None outside any."""
    return _selected_backend.get()


def inverse_backend(device="cpu"):
    """Name of the backend a solve on ``device`` uses now.

    Inside ``use_backend(name)`` that is ``name``; otherwise the most recently registered backend
    that is a default for the device's type and can run here (``"compiled"`` on CPU when the
    extension is built), else ``"torch"``. A default that cannot run is named in a
    ``RuntimeWarning`` with the reason.
    """
    selected = selected_backend()
    if selected is not None:
        return selected
    device_type = torch.device(device).type
    for name, backend in reversed(_BACKENDS.items()):
        if device_type in backend.default_for:
            try:
                reason = backend.unavailable_reason()
            except Exception as error:  # a broken availability check must not break sampling
                reason = f"Its availability check raised {type(error).__name__}: {error}"
            if reason is None:
                return name
            warnings.warn(
                f"no {name} solve: SquareAutoregressiveConv2d and EmergingConv2d "
                f"sample with the slower torch wavefront solve. {reason}",
                RuntimeWarning,
                stacklevel=1,  # one place whoever asks: Python's default filter shows it once
            )
    return "torch"


def fused_emerging_step(name: str | None, z: torch.Tensor) -> EmergingStep | None:
    """The fused sampling step of backend ``name`` (None: :func:`inverse_backend` of z's device)
    for :class:`~normflows_emerging.EmergingConv2d`'s input ``z``, or None when that backend has
    none, ``z`` needs a gradient or runs under a torch.func transform or forward-mode AD (the
    fused steps have no backward and take plain tensors only): the layer then runs its two
    solves and the 1x1 convolution one by one.

    Raises:
      ValueError: ``name`` is not a registered backend
    """
    if (torch.is_grad_enabled() and z.requires_grad) or under_transform(z):
        return None
    name = name if name is not None else inverse_backend(z.device)
    _check_backend(name)
    return _BACKENDS[name].emerging_step


def solve_autoregressive(
    y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1, backend: str | None = None
) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel, dilation) = y`` for ``x``, differentiably.

    Args:
      y: (B, C, H, W) float32 or float64 right-hand side with the bias already subtracted
      kernel: (C, C, m, m) causal kernel of y's dtype and device, m >= 1; corner tap
        ``kernel[:, :, m-1, m-1]`` lower-triangular with a non-zero diagonal (entries above the
        diagonal are not read)
      dilation: spacing of the taps, a positive int
      backend: a name from :func:`backend_names` or None for :func:`inverse_backend`

    Returns:
      x of shape (B, C, H, W), contiguous. Derivatives of any order, in reverse and forward mode,
      and under ``torch.func`` transforms (``grad``, ``jacrev``, ``jvp``, ``vmap`` over ``y``
      and/or ``kernel``): the backward is one transposed solve and one convolution weight
      gradient, the forward-mode derivative one convolution and one solve, both themselves
      differentiable; kernel entries the solve does not read get zero derivative.

    Raises:
      TypeError: ``y`` or ``kernel`` not float32/float64 (float16 and bfloat16 included: the
        solves run in full precision only), a kernel of another dtype, a non-int dilation, or a
        dtype the backend cannot run
      ValueError: wrong shapes, dilation < 1, tensors on different devices, an unknown backend or
        a non-CPU tensor for the compiled backend
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal (checked on the CPU, outside
        torch.func transforms)
    """
    name = backend if backend is not None else inverse_backend(y.device)
    _check_backend(name)
    check_solve_inputs(y, kernel, dilation)
    if y.numel() == 0:
        return y.clone()
    # Every non-corner tap lies at least `dilation` pixels away along some axis, so any dilation
    # >= max(H, W) reads the same pixels (none): capping it keeps paddings and offsets small.
    dilation = min(dilation, max(y.shape[2], y.shape[3]))
    return _solve(y, kernel, dilation, name)


def _solve(y, kernel, dilation, backend):
    """The backend's solve of checked inputs; through :class:`_AutoregressiveSolve` when a
    derivative or a transform needs it (the plain call skips autograd's bookkeeping). Tensors
    of autograd's batched gradients (:func:`legacy_batched`) take the torch wavefront, the one
    backend made of plain torch operations."""
    if legacy_batched(y, kernel):
        backend = "torch"
    if (torch.is_grad_enabled() and (y.requires_grad or kernel.requires_grad)) or under_transform(
        y, kernel
    ):
        return _AutoregressiveSolve.apply(y, kernel, dilation, backend)
    return _BACKENDS[backend].solve(y, kernel, dilation)


class _AutoregressiveSolve(torch.autograd.Function):
    """x = A^-1 y for the causal convolution A: derivatives without unrolling the solve.

    Every derivative is written with :func:`_solve` and convolutions, so it is differentiable
    again (higher orders) and runs under torch.func transforms; the ``vmap`` rule folds a
    vmapped batch of right-hand sides into the batch of one solve (one solve per kernel when
    the kernel is vmapped too).
    """

    @staticmethod
    def forward(y, kernel, dilation, backend):
        return _BACKENDS[backend].solve(y, kernel, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, kernel, dilation, backend = inputs
        ctx.save_for_backward(output, kernel)
        ctx.save_for_forward(output, kernel)
        ctx.dilation, ctx.backend = dilation, backend

    @staticmethod
    def backward(ctx, grad_x):
        x, kernel = ctx.saved_tensors
        dilation = ctx.dilation
        # grad_y = A^-T grad_x. A^T is anti-causal; mirrored in channels and space it is the causal
        # convolution with the kernel transposed in (out, in) and reversed in both channel axes.
        adjoint = kernel.transpose(0, 1).flip(0, 1)
        grad_y = _solve(grad_x.flip(1, 2, 3), adjoint, dilation, ctx.backend).flip(1, 2, 3)
        grad_kernel = None
        if ctx.needs_input_grad[1]:
            # dx = -A^-1 (dA) x, so dL/dK = -(weight gradient of the convolution of x, at grad_y).
            pad = dilation * (kernel.shape[-1] - 1)
            grad_kernel = -torch.nn.grad.conv2d_weight(
                F.pad(x, (pad, 0, pad, 0)), kernel.shape, grad_y, dilation=dilation
            )
            grad_kernel = _zero_unread(grad_kernel)
        return grad_y, grad_kernel, None, None

    @staticmethod
    def jvp(ctx, y_tangent, kernel_tangent, _dilation, _backend):
        x, kernel = ctx.saved_tensors
        # dx = A^-1 (dy - (dA) x)
        rhs = torch.zeros_like(x) if y_tangent is None else y_tangent
        if kernel_tangent is not None:
            pad = ctx.dilation * (kernel.shape[-1] - 1)
            rhs = rhs - F.conv2d(
                F.pad(x, (pad, 0, pad, 0)), _zero_unread(kernel_tangent), dilation=ctx.dilation
            )
        return _solve(rhs, kernel, ctx.dilation, ctx.backend)

    @staticmethod
    def vmap(info, in_dims, y, kernel, dilation, backend):
        y_dim, kernel_dim = in_dims[:2]
        y = y.movedim(y_dim, 0) if y_dim is not None else y.expand(info.batch_size, *y.shape)
        if kernel_dim is None:
            x = _solve(y.flatten(0, 1), kernel, dilation, backend)
            return x.unflatten(0, (info.batch_size, -1)), 0
        kernel = kernel.movedim(kernel_dim, 0)
        solved = [_solve(y[i], kernel[i], dilation, backend) for i in range(info.batch_size)]
        return torch.stack(solved), 0


def _zero_unread(kernel_derivative: torch.Tensor) -> torch.Tensor:
    """``kernel_derivative`` with the corner tap's entries above the diagonal set to zero: the
    solve never reads them (out of place, so that it stays differentiable and vmappable)."""
    channels, size = kernel_derivative.shape[0], kernel_derivative.shape[-1]
    options = dict(dtype=torch.bool, device=kernel_derivative.device)
    read = torch.ones(channels, channels, size, size, **options)
    read[:, :, -1, -1] = torch.ones(channels, channels, **options).tril()
    # elementwise, so that it also runs on autograd's batched gradients (no view of them)
    return torch.where(read, kernel_derivative, 0.0)


register_backend("torch", solve_wavefront)
register_backend("naive", solve_naive)
