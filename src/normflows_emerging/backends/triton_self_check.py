"""The triton backend checks each of its kernels once before it uses them: per device, dtype and
kernel variant.

The driver, Triton's compiler and the hardware can differ from what the tests see (they run the
kernels in Triton's interpreter and compile them ahead of time), and a kernel that computes wrong
values would otherwise be used without a word. So the first call of a variant on a device solves
a small fixed problem (:func:`check_problem`) with the kernel and compares the result with the
torch wavefront solve of the same problem in float64 on the CPU. Within :data:`TOLERANCE` the
kernel is used from then on; otherwise a ``RuntimeWarning`` names the device, the triton version
and the error, and that variant runs the torch wavefront on that device for the rest of the
process. With the environment variable ``NORMFLOWS_EMERGING_TRITON_CHECK=error`` a failed check
raises :class:`TritonSelfCheckError` instead, on every call of the variant.

The check reads the result once (one host synchronisation, once per variant and device); a
later call only looks its variant up. Threads that make their first call of a variant at the
same time run one check: the first runs it, the others wait for its outcome, and none launches
the kernel before it has passed.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable, Hashable

import torch

from ..solve.wavefront import solve_wavefront

ENVIRONMENT_VARIABLE = "NORMFLOWS_EMERGING_TRITON_CHECK"
# Largest |kernel - reference| accepted on the check problem, whose solution has entries of
# about 1: the float32 kernels agree to about 1e-6 there, float64 to about 1e-15.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


class TritonSelfCheckError(RuntimeError):
    """A triton kernel disagreed with the torch wavefront solve on the self-check's problem and
    ``NORMFLOWS_EMERGING_TRITON_CHECK=error`` is set."""


def _mode() -> str:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "warn").strip().lower() or "warn"
    if value not in ("warn", "error"):
        raise ValueError(
            f"environment variable {ENVIRONMENT_VARIABLE} must be 'warn' (the default) or "
            f"'error', got {os.environ[ENVIRONMENT_VARIABLE]!r}"
        )
    return value


def check_problem() -> tuple:
    """The fixed problem of the check, float64 on the CPU: ``(z, anticausal_kernel,
    causal_kernel, anticausal_bias, causal_bias, weight_inverse)``, from a private generator
    (the global random state is untouched).

    z is (2, 5, 4, 6): five channels (not a power of two), a non-square image, batch 2; two
    (5, 5, 2, 2) causal kernels whose corner diagonals lie in [1, 1.5] and other taps in
    [-0.15, 0.15] (the solution stays of order 1), two biases and a 1x1 inverse.
    """
    generator = torch.Generator().manual_seed(0)

    def uniform(*shape, low=-0.15, high=0.15):
        values = torch.rand(*shape, generator=generator, dtype=torch.float64)
        return low + (high - low) * values

    channels = 5
    kernels = []
    for _ in range(2):
        kernel = uniform(channels, channels, 2, 2)
        corner = kernel[:, :, -1, -1].tril(-1) + torch.diag(uniform(channels, low=1.0, high=1.5))
        kernel[:, :, -1, -1] = corner
        kernels.append(kernel)
    biases = [uniform(channels, low=-1.0, high=1.0) for _ in range(2)]
    weight_inverse = torch.eye(channels, dtype=torch.float64) + uniform(channels, channels)
    z = uniform(2, channels, 4, 6, low=-1.0, high=1.0)
    return (z, *kernels, *biases, weight_inverse)


def reference_emerging_step(
    z, anticausal_kernel, anticausal_bias, causal_kernel, causal_bias, weight_inverse, dilation
):
    """EmergingConv2d's sampling step with the torch wavefront solve (the fallback of the fused
    step): ``W^-1 A_causal^-1 A_anticausal^-1 z``, ``weight_inverse`` None for no 1x1 layer."""
    channels = z.shape[1]
    x = z - anticausal_bias.view(-1, 1, 1)
    x = solve_wavefront(x.flip(1, 2, 3), anticausal_kernel, dilation).flip(1, 2, 3)
    x = solve_wavefront(x - causal_bias.view(-1, 1, 1), causal_kernel, dilation)
    if weight_inverse is None:
        return x
    return torch.nn.functional.conv2d(x, weight_inverse.reshape(channels, channels, 1, 1))


def describe(device: torch.device) -> str:
    """The device as the messages name it: index, model and compute capability."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"
    return f"{device.type} (Triton's interpreter)"


class _Pending:
    """A check that one thread is running; the others wait for ``done``."""

    def __init__(self):
        self.done = threading.Event()


_UNCHECKED = object()
_lock = threading.Lock()
# kernels module -> {(device, dtype, variant): None (passed) or the failure message}; weak, so
# that a module the tests load and drop takes its outcomes along.
_outcomes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kernel_passed(
    kernels,
    device: torch.device,
    dtype: torch.dtype,
    variant: Hashable,
    label: str,
    error: Callable[[], float],
) -> bool:
    """Whether ``variant`` of ``kernels`` may run on ``device`` in ``dtype``: True once its check
    has passed; False (the caller runs the torch wavefront) once it has failed.

    Args:
      kernels: the kernels module the caller launches from
      device, dtype: those of the call
      variant: a hashable name of the kernel and its compile-time flags
      label: the variant in words, for the messages ("the solve", ...)
      error: runs the check on ``device`` in ``dtype``: the largest absolute difference between
        the kernel's result and the reference (the only value it reads on the host); any
        exception it raises counts as a failed check

    Raises:
      TritonSelfCheckError: the check failed and ``NORMFLOWS_EMERGING_TRITON_CHECK=error``
      ValueError: that environment variable has another value than 'warn' or 'error'
      RuntimeError: the first call of a variant while a CUDA graph is being captured (the check
        reads a value on the host, which capture forbids)
    """
    key = (device, dtype, variant)
    while True:
        with _lock:
            outcomes = _outcomes.setdefault(kernels, {})
            outcome = outcomes.get(key, _UNCHECKED)
            if outcome is _UNCHECKED:  # this thread checks it
                pending = outcomes[key] = _Pending()
                break
        if not isinstance(outcome, _Pending):
            return _use(outcome)
        outcome.done.wait()  # then read its outcome, or check it if that thread gave up
    try:
        mode = _mode()
        message = _run_check(device, dtype, label, error)
    except BaseException:  # no outcome (interrupted, out of memory, a CUDA graph being captured,
        # a bad value of the variable): the next call checks again
        with _lock:
            del outcomes[key]
        pending.done.set()
        raise
    with _lock:
        outcomes[key] = message
    pending.done.set()
    if message is not None and mode == "warn":
        warnings.warn(message + _FALLBACK_NOTE, RuntimeWarning, stacklevel=3)
    return _use(message)


_FALLBACK_NOTE = (
    f"; the triton backend runs the torch wavefront solve instead for this kernel, dtype and "
    f"device from now on (set {ENVIRONMENT_VARIABLE}=error to make this an error). Please "
    "report it with this message."
)


def _use(message: str | None) -> bool:
    if message is None:
        return True
    if _mode() == "error":
        raise TritonSelfCheckError(message)
    return False


def _run_check(device, dtype, label, error) -> str | None:
    """None if the check passes, else the message that says how it failed."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "the triton backend checks each kernel on its first call, which cannot happen "
            "while a CUDA graph is captured: run the model once before capturing (the usual "
            "warm-up)"
        )
    import triton

    where = f"triton {triton.__version__} on {describe(device)}"
    tolerance = TOLERANCE[dtype]
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if device.type == "cuda":
                with torch.cuda.device(device):
                    difference = error()
            else:
                difference = error()
    except torch.OutOfMemoryError:
        raise
    except Exception as failure:
        return (
            f"self-check of the triton kernels: {label} in {_dtype_name(dtype)} failed with "
            f"{where}: {type(failure).__name__}: {failure}"
        )
    if difference <= tolerance:  # False for NaN
        return None
    return (
        f"self-check of the triton kernels: {label} in {_dtype_name(dtype)} is off by "
        f"{difference:.3g} (tolerance {tolerance:g}) from the torch wavefront solve with {where}"
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def outcomes() -> list:
    """The checks this process has run, as ``(device, dtype, variant, message)``: message None
    when the check passed (``benchmarks/gpu_check.py`` reports them)."""
    with _lock:
        tables = list(_outcomes.values())
    return [
        (device, dtype, variant, message)
        for table in tables
        for (device, dtype, variant), message in list(table.items())
        if not isinstance(message, _Pending)
    ]
