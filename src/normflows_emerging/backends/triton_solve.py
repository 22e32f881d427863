"""The ``"triton"`` solve backend: Triton kernels, one launch per solve (CUDA's default).

One program per image walks the anti-diagonals (see
:mod:`normflows_emerging.backends.triton_kernels`), so a whole solve is one kernel launch, and
:func:`emerging_step` runs an :class:`~normflows_emerging.EmergingConv2d` sampling step (the
anti-causal solve, the causal solve and ``W^-1``) as one launch too. float32 and float64, any
kernel size and dilation, up to ``MAX_CHANNELS`` channels (more run the torch wavefront solve).

The kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter when the environment
variable ``TRITON_INTERPRET=1`` is set before the first triton solve of the process (Triton reads
it when the kernels are defined): that is how the tests run them without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import torch
import torch.nn.functional as F

from ..solve.checks import check_corner_diagonal
from ..solve.wavefront import solve_wavefront

_DTYPES = (torch.float32, torch.float64)
# Channel counts above this run the torch wavefront solve (the kernels would spill registers).
MAX_CHANNELS = 128


@functools.cache
def _import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return (
            f"the triton package does not import ({error}); install it with `pip install "
            "triton` (CUDA builds of torch bring it along), or use the 'torch' backend"
        )
    return None


def unavailable_reason() -> str | None:
    """None when the triton package imports, else why not and what to install (for the registry)."""
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


def _blocks(channels: int, height: int, width: int, dtype: torch.dtype) -> dict:
    """Block sizes and warps: BLOCK_P pixels of a diagonal x BLOCK_C channels per step, input
    channels CHUNK at a time, BLOCK_Q pixels per step of the 1x1 pass. Per thread: at most 16
    values of the corner's (BLOCK_C, BLOCK_C) inverse while it is computed, 4 float32 (2 float64)
    values of a (pixels, channels) accumulator, 16 (8) of a (BLOCK_P, BLOCK_C, CHUNK) product
    (the spill test compiles these sizes for sm_80 and sm_90)."""
    import triton

    values = 2 if dtype.itemsize <= 4 else 1  # float64 takes two registers a value
    block_c = triton.next_power_of_2(channels)
    num_warps = max(4, min(16, block_c * block_c // (32 * 16)))
    threads = 32 * num_warps
    diagonal = triton.next_power_of_2(min(height, width))
    block_p = max(1, min(diagonal, 2 * values * threads // block_c))
    chunk = max(1, min(block_c, 8 * values * threads // (block_p * block_c)))
    block_q = max(1, min(triton.next_power_of_2(height * width), 2 * values * threads // block_c))
    # All of the register file for the one program (ptxas otherwise keeps room for two per SM on
    # sm_80 and spills the float64 step at C = 48).
    maxnreg = min(255, 65536 // threads)
    return dict(
        BLOCK_P=block_p, BLOCK_C=block_c, CHUNK=chunk, BLOCK_Q=block_q, num_warps=num_warps,
        maxnreg=maxnreg,
    )  # fmt: skip


def solve_triton(y: torch.Tensor, kernel: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Solve ``causal_conv(x, kernel) = y`` with one Triton launch (one program per image).

    Args:
      y: (B, C, H, W) right-hand side, bias already subtracted; CUDA (or CPU in the interpreter)
      kernel: (C, C, m, m) causal kernel of y's dtype whose corner tap is lower-triangular
      dilation: spacing of the taps, >= 1 (capped at max(H, W) by the caller)

    Returns:
      x of shape (B, C, H, W), contiguous

    Raises:
      RuntimeError: triton does not import
      ValueError: a CPU tensor outside Triton's interpreter
      TypeError: a dtype other than float32 or float64
      torch.linalg.LinAlgError: a zero on the corner tap's diagonal
    """
    kernels = _kernels(y)
    if y.shape[1] > MAX_CHANNELS:
        return solve_wavefront(y, kernel, dilation)
    check_corner_diagonal(kernel)
    y = y.detach().contiguous()
    kernel = kernel.detach().contiguous()
    x = torch.empty_like(y)
    batch, channels, height, width = y.shape
    workspace = y.new_empty(batch, channels, channels)
    blocks = _blocks(channels, height, width, y.dtype)
    del blocks["BLOCK_Q"]
    kernels.solve_kernel[(batch,)](
        y, x, kernel, workspace, channels, height, width, dilation, SIZE=kernel.shape[-1], **blocks
    )
    return x


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
    if channels > MAX_CHANNELS:
        x = z - anticausal_bias.view(-1, 1, 1)
        x = solve_wavefront(x.flip(1, 2, 3), anticausal_kernel, dilation).flip(1, 2, 3)
        x = solve_wavefront(x - causal_bias.view(-1, 1, 1), causal_kernel, dilation)
        return (
            x
            if weight_inverse is None
            else F.conv2d(x, weight_inverse.reshape(channels, channels, 1, 1))
        )
    out, scratch = torch.empty_like(z), torch.empty_like(z)
    has_mix = weight_inverse is not None
    matrix = weight_inverse.detach().reshape(channels, channels).contiguous() if has_mix else z
    workspace = z.new_empty(batch, channels, channels)
    kernels.emerging_step_kernel[(batch,)](
        z, out, scratch, workspace,
        anticausal_kernel.detach().contiguous(), anticausal_bias.detach().contiguous(),
        causal_kernel.detach().contiguous(), causal_bias.detach().contiguous(), matrix,
        channels, height, width, dilation,
        SIZE=causal_kernel.shape[-1], HAS_MIX=has_mix, **_blocks(channels, height, width, z.dtype),
    )  # fmt: skip
    return out
