"""The ``"triton"`` solve backend: Triton kernels, one launch per solve (CUDA's default).

One program per image walks the anti-diagonals (see
:mod:`normflows_emerging.backends.triton_kernels`), so a whole solve is one kernel launch, and
:func:`emerging_step` runs an :class:`~normflows_emerging.EmergingConv2d` sampling step (the
anti-causal solve, the causal solve and ``W^-1``) as one launch too. float32 and float64, any
kernel size and dilation, up to ``MAX_CHANNELS`` channels.

Where the kernels cannot serve a call they hand it to the torch wavefront solve, which gives the
same values: more than ``MAX_CHANNELS`` channels or block sizes the device cannot hold
(:mod:`~normflows_emerging.backends.triton_device`), a launch the device refuses for resources
(``triton.OutOfResources``), or a kernel that failed its self-check on this device
(:mod:`~normflows_emerging.backends.triton_self_check`). Each reason is said once, in a
``RuntimeWarning``. Offsets inside an image or kernel that may reach 2**31 switch the kernels to
64-bit indices.

The kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter when the environment
variable ``TRITON_INTERPRET=1`` is set before the first triton solve of the process (Triton reads
it when the kernels are defined): that is how the tests run them without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import sys
import threading
import warnings

import torch

from ..solve.checks import check_corner_diagonal
from ..solve.wavefront import solve_wavefront
from . import triton_self_check
from .triton_device import MAX_CHANNELS, block_sizes, device_limits
from .triton_self_check import check_problem, reference_emerging_step

_DTYPES = (torch.float32, torch.float64)
# The oldest triton release the tests run (CI installs it next to the newest): triton.knobs,
# which the ahead-of-time compile tests use, came with 3.4.
MIN_TRITON = (3, 4)
# Offsets inside one image or kernel from this size on need 64-bit indices.
_INT32_LIMIT = 2**31


@functools.cache
def _import_error() -> str | None:
    try:
        triton = importlib.import_module("triton")
    except ImportError as error:
        return (
            f"the triton package does not import ({error}); install it with `pip install "
            "triton` (CUDA builds of torch bring it along), or use the 'torch' backend"
        )
    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        return (
            f"triton {triton.__version__} is older than {'.'.join(map(str, MIN_TRITON))}, the "
            "oldest release the triton backend is tested with; upgrade torch (its CUDA builds "
            "bring triton along) or triton, or use the 'torch' backend"
        )
    return None


def unavailable_reason() -> str | None:
    """None when a recent enough triton package imports, else why not and what to install (for
    the registry)."""
    return _import_error()


_KERNELS = "normflows_emerging.backends.triton_kernels"


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were first
    loaded, or now if they are not loaded yet)."""
    module = sys.modules.get(_KERNELS)
    if module is not None:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(module.solve_kernel, InterpretedFunction)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels(tensor: torch.Tensor):
    """The kernels module, after checking that it can run on ``tensor``'s device."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the triton solve is not available: {reason}")
    if not tensor.is_cuda and not interpreted():
        raise ValueError(
            f"the triton solve runs on CUDA tensors, got a {tensor.device} tensor; use the "
            "'compiled' or 'torch' backend on the CPU, or set TRITON_INTERPRET=1 before the first "
            "triton solve of the process to run the kernels in Triton's interpreter (slow; for "
            "tests)"
        )
    if tensor.dtype not in _DTYPES:
        raise TypeError(f"the triton solve takes float32 or float64, got {tensor.dtype}")
    return importlib.import_module(_KERNELS)


_said = set()
_said_lock = threading.Lock()


def _say_once(message: str) -> None:
    """A ``RuntimeWarning`` the first time ``message`` comes up in this process."""
    with _said_lock:
        if message in _said:
            return
        _said.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def needs_wide_indices(channels: int, height: int, width: int, size: int, dilation: int) -> bool:
    """Whether an offset the kernels compute can reach 2**31: inside an image (C*H*W), inside a
    kernel (C*C*m*m) or a tap's reach (m * dilation * max(H, W)); the kernels then use int64."""
    largest = max(channels * height * width, channels * channels * size * size)
    return max(largest, size * dilation * max(height, width)) >= _INT32_LIMIT


_block_sizes = functools.lru_cache(maxsize=256)(block_sizes)  # a few shapes per model


def _configuration(tensor: torch.Tensor, size: int, dilation: int, what: str) -> dict | None:
    """Block sizes, launch options and ``WIDE`` (64-bit indices) for ``tensor`` (B, C, H, W)
    and ``size`` x ``size`` kernels, or None (said once) when the kernels cannot take it on its
    device."""
    batch, channels, height, width = tensor.shape
    wide = needs_wide_indices(channels, height, width, size, dilation)
    limits = device_limits(tensor.device)
    blocks = None
    if batch < 2**31:  # the most programs a launch can have
        blocks = _block_sizes(channels, height, width, tensor.dtype, limits, wide)
    if blocks is None:
        reason = (
            f"more than {MAX_CHANNELS} channels"
            if channels > MAX_CHANNELS
            else f"a batch of 2**31 images or more, or more than {limits.name} allows a block"
        )
        _say_once(
            f"the triton kernels take no {what} with {channels} channels on {tensor.device} "
            f"({reason}): it runs the torch wavefront solve, which gives the same values more "
            "slowly"
        )
        return None
    return dict(blocks, WIDE=wide)


def _launch(kernel, tensor: torch.Tensor, args: tuple, options: dict) -> None:
    """Launch ``kernel`` with one program per image of ``tensor``, on its device."""
    device = tensor.device
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        # fp fusion (FMA), the default of every triton release so far, named so that a later
        # default cannot change the kernels' rounding
        kernel[(tensor.shape[0],)](*args, enable_fp_fusion=True, **options)


def _launch_solve(kernels, y, kernel, x, dilation, config) -> None:
    batch, channels, height, width = y.shape
    workspace = y.new_empty(batch, channels, channels)
    options = dict(config, SIZE=kernel.shape[-1])
    del options["BLOCK_Q"]
    args = (y, x, kernel, workspace, channels, height, width, dilation)
    _launch(kernels.solve_kernel, y, args, options)


def _launch_step(kernels, z, out, step, weight_inverse, dilation, config) -> None:
    """The fused step into ``out``; ``step`` = (anticausal kernel, its bias, causal kernel, its
    bias)."""
    batch, channels, height, width = z.shape
    scratch, workspace = torch.empty_like(z), z.new_empty(batch, channels, channels)
    has_mix = weight_inverse is not None
    matrix = weight_inverse.reshape(channels, channels).contiguous() if has_mix else z
    args = (z, out, scratch, workspace, *step, matrix, channels, height, width, dilation)
    options = dict(config, SIZE=step[0].shape[-1], HAS_MIX=has_mix)
    _launch(kernels.emerging_step_kernel, z, args, options)


def _refused(launch, device: torch.device, what: str) -> bool:
    """Run ``launch()``; True (said once) when the device refused the kernel for resources
    (``triton.OutOfResources``, raised before anything runs)."""
    import triton

    try:
        launch()
    except triton.OutOfResources as error:
        _say_once(
            f"{device} refused the triton kernel of the {what} ({error}): the {what} runs the "
            "torch wavefront solve there, which gives the same values more slowly"
        )
        return True
    return False


# Blocks of the self-check: small, so that on its problem (C = 5, 4 x 6 images) every loop of
# the kernels runs more than once: two pixel blocks per long diagonal, three channel chunks (the
# last partial), two column blocks of the corner's inverse, masked channels.
_CHECK_BLOCKS = dict(BLOCK_P=2, BLOCK_C=8, CHUNK=2, BLOCK_Q=4, BLOCK_J=4, num_warps=4, maxnreg=255)


def _check_solve(kernels, device, dtype, wide) -> float:
    """Max |kernel - reference| of the solve on the check problem (one host sync)."""
    z, kernel = check_problem()[:2]
    reference = solve_wavefront(z, kernel, 1)
    y, kernel = z.to(device, dtype), kernel.to(device, dtype)
    x = torch.empty_like(y)
    _launch_solve(kernels, y, kernel, x, 1, dict(_CHECK_BLOCKS, WIDE=wide))
    return (x.double().cpu() - reference).abs().max().item()


def _check_step(kernels, device, dtype, has_mix, wide) -> float:
    """Max |kernel - reference| of the fused emerging step on the check problem."""
    z, anticausal_kernel, causal_kernel, anticausal_bias, causal_bias, weight_inverse = (
        check_problem()
    )
    weight_inverse = weight_inverse if has_mix else None
    step = (anticausal_kernel, anticausal_bias, causal_kernel, causal_bias)
    reference = reference_emerging_step(z, *step, weight_inverse, 1)
    on_device = [t.to(device, dtype) for t in (z, *step)]
    matrix = None if weight_inverse is None else weight_inverse.to(device, dtype)
    out = torch.empty_like(on_device[0])
    _launch_step(
        kernels, on_device[0], out, on_device[1:], matrix, 1, dict(_CHECK_BLOCKS, WIDE=wide)
    )
    return (out.double().cpu() - reference).abs().max().item()


def solve_triton(y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel) = y`` with one Triton launch (one program per image).

    The first call per device and dtype checks the kernel (see
    :mod:`~normflows_emerging.backends.triton_self_check`); where the kernel cannot serve the
    call, the torch wavefront solves it (see the module's description).

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted; CUDA (or CPU in the interpreter)
      kernel: (C, C, m, m) causal kernel of y's dtype whose corner tap is lower-triangular
      dilation: spacing of the taps, >= 1 (capped at max(H, W) by the caller)

    Returns:
      x of shape (B, C, H, W), contiguous

    Raises:
      RuntimeError: triton does not import, or is older than 3.4
      ValueError: a CPU tensor outside Triton's interpreter
      TypeError: a dtype other than float32 or float64
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal (CPU tensors only)
      TritonSelfCheckError: the kernel failed its self-check and
        ``NORMFLOWS_EMERGING_TRITON_CHECK=error``
    """
    kernels = _kernels(y)
    check_corner_diagonal(kernel)
    config = _configuration(y, kernel.shape[-1], dilation, "solve")
    if config is not None:
        wide = config["WIDE"]
        verified = triton_self_check.kernel_passed(
            kernels, y.device, y.dtype, ("solve", wide), "the solve",
            functools.partial(_check_solve, kernels, y.device, y.dtype, wide),
        )  # fmt: skip
        if verified:
            y, kernel = y.detach().contiguous(), kernel.detach().contiguous()
            x = torch.empty_like(y)
            launch = functools.partial(_launch_solve, kernels, y, kernel, x, dilation, config)
            if not _refused(launch, y.device, "solve"):
                return x
    return solve_wavefront(y, kernel, dilation)


def emerging_step(
    z: torch.Tensor,
    anticausal_kernel: torch.Tensor,
    anticausal_bias: torch.Tensor,
    causal_kernel: torch.Tensor,
    causal_bias: torch.Tensor,
    weight_inverse: torch.Tensor | None,
    dilation: int = 1,
) -> torch.Tensor:
    """EmergingConv2d's sampling step in one launch: ``W^-1 A_causal^-1 A_anticausal^-1 z``.

    Checked and handed to the torch wavefront like :func:`solve_triton`.

    Args:
      z: (B, C, H, W) input of the step, non-empty
      anticausal_kernel, causal_kernel: (C, C, m, m) kernels in causal orientation (the layers'
        ``causal_kernel()``); the anti-causal one is applied mirrored (``flip=True``)
      anticausal_bias, causal_bias: (C,) biases of the two autoregressive layers
      weight_inverse: ``W^-1`` as (C, C) or (C, C, 1, 1), or None for no 1x1 layer
      dilation: spacing of the taps of both layers

    Returns:
      x of shape (B, C, H, W); besides it the step allocates one scratch tensor of its size

    Raises:
      as :func:`solve_triton` (except the zero-diagonal check: the layers' diagonals are
      ``exp(log_d)``, never zero)
    """
    kernels = _kernels(z)
    z = z.detach().contiguous()
    batch, channels, height, width = z.shape
    dilation = min(dilation, max(height, width))
    step = [
        t.detach().contiguous()
        for t in (anticausal_kernel, anticausal_bias, causal_kernel, causal_bias)
    ]
    weight_inverse = None if weight_inverse is None else weight_inverse.detach()
    config = _configuration(z, causal_kernel.shape[-1], dilation, "emerging step")
    if config is not None:
        has_mix, wide = weight_inverse is not None, config["WIDE"]
        label = "the fused emerging step" + (" with W^-1" if has_mix else "")
        verified = triton_self_check.kernel_passed(
            kernels, z.device, z.dtype, ("emerging_step", has_mix, wide), label,
            functools.partial(_check_step, kernels, z.device, z.dtype, has_mix, wide),
        )  # fmt: skip
        if verified:
            out = torch.empty_like(z)
            launch = functools.partial(
                _launch_step, kernels, z, out, step, weight_inverse, dilation, config
            )
            if not _refused(launch, z.device, "emerging step"):
                return out
    return reference_emerging_step(z, *step, weight_inverse, dilation)
